/** The embedding API: `const d = await createDaemon(config); await d.start(); d.addresses(); await d.stop()`. */
export { createDaemon } from './daemon.js';
export type { Daemon, DaemonAddresses, DaemonDeps, DaemonState, ReloadResult } from './daemon.js';
export { configSchema } from './config/schema.js';
export type { Config, ConfigInput } from './config/schema.js';
export { loadConfig, validateConfig } from './config/load.js';
export type { ConfigSources } from './config/load.js';
export { configJsonSchema } from './config/json-schema.js';
export { EdgeMqttError, ConfigError, ListenError, SecurityFileError } from './errors.js';
export type { ErrorCode } from './errors.js';
export type { ReadinessReport } from './observability/health.js';
export type { AuthStats, ReloadFailure } from './auth/authorizer.js';
export type { LimitsStats, LimitName } from './broker/limits.js';
export type { FlowControlStats } from './broker/flow-control.js';
