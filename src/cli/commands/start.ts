/**
 * `edgemqtt start`: runs the daemon until a stop signal, speaking sd_notify
 * to systemd (READY=1 once listeners are bound, WATCHDOG=1 while healthy,
 * RELOADING=1/READY=1 around SIGHUP, STOPPING=1 on stop).
 */
import path from 'node:path';
import { appliedEnvNames, ignoredEnvNames, loadConfig, type ConfigSources } from '../../config/load.js';
import { createDaemon } from '../../daemon.js';
import { ConfigError, EdgeMqttError } from '../../errors.js';
import { createLogger, type Logger } from '../../observability/logger.js';
import { createNotifier, startWatchdog, type Watchdog } from '../../systemd/notify.js';
import { ExitCode, type CliIo, type Signal } from '../io.js';

/**
 * Extra time past shutdown.timeoutSec before a stuck stop is abandoned
 * (exit 70). The unit's TimeoutStopSec must exceed the sum.
 */
export const STOP_GRACE_MS = 2000;
/** Longest the exit waits for STOPPING=1 to be handed to the service manager. */
const STOPPING_NOTIFY_WAIT_MS = 1000;

const STATUS_RUNNING = 'accepting MQTT connections';

export async function start(io: CliIo, sources: ConfigSources): Promise<number> {
  const config = await loadConfig(sources);
  const logger = createLogger({ level: config.log.level, journald: io.stdoutIsJournal ?? false });
  const log = logger.child({ component: 'cli' });
  logConfigSources(log, sources);
  const notifier = createNotifier({
    env: io.env,
    onError: (error) => log.warn({ err: error.message }, 'systemd notification failed'),
  });
  // One way to read the config again, for SIGHUP and for the admin API's reload.
  const reloadConfig = () => loadConfig(sources);
  const daemon = await createDaemon(config, { logger, reloadConfig });

  // 'starting' until daemon.start() settles; a stop signal in that window is
  // remembered and acted on once start settles (the daemon cannot stop
  // half-started components), unless a second signal forces the exit.
  let phase: 'starting' | 'running' | 'stopping' = 'starting';
  let watchdog: Watchdog | null = null;
  let stopSignals = 0;
  let stoppingSent: Promise<void> = Promise.resolve();
  let finish: (code: number) => void = () => {};
  const finished = new Promise<number>((resolve) => (finish = resolve));

  const beginStop = () => {
    phase = 'stopping';
    const deadline = setTimeout(() => {
      log.error('graceful stop did not finish in time: exiting');
      finish(ExitCode.software);
    }, config.shutdown.timeoutSec * 1000 + STOP_GRACE_MS);
    // Not unref'd: if a stuck stop leaves no other handle open, this timer
    // still ends the process with a code instead of Node's exit 13
    // (unsettled top-level await).
    daemon.stop().then(
      async () => {
        clearTimeout(deadline);
        // STOPPING=1 comes from a child process; let it finish (briefly) so
        // the manager hears it before it sees the main process exit.
        await Promise.race([stoppingSent, delay(STOPPING_NOTIFY_WAIT_MS)]);
        finish(ExitCode.ok);
      },
      (error: unknown) => {
        clearTimeout(deadline);
        log.error({ err: error }, 'stop failed');
        finish(ExitCode.software);
      },
    );
  };

  const onStopSignal = (signal: Signal) => {
    stopSignals += 1;
    if (stopSignals > 1) {
      log.warn({ signal }, 'second stop signal: exiting now');
      finish(ExitCode.forced);
      return;
    }
    log.info({ signal, during: phase }, 'stop requested');
    stoppingSent = notifier.notify('STOPPING=1');
    watchdog?.stop();
    if (phase === 'running') beginStop();
  };

  // Reloads run one at a time, so RELOADING=1/READY=1 pairs never interleave.
  let reloads: Promise<void> = Promise.resolve();
  let reloadWhenRunning = false;
  const queueReload = () => {
    reloads = reloads.then(reload).catch((error: unknown) => log.error({ err: error }, 'reload failed'));
  };
  const onReloadSignal = () => {
    if (phase === 'starting') {
      // The file may have changed after start read it: reload once running.
      reloadWhenRunning = true;
      return;
    }
    queueReload();
  };

  async function reload(): Promise<void> {
    if (phase !== 'running') return;
    await notifier.notify('RELOADING=1');
    let status = STATUS_RUNNING;
    try {
      const next = await reloadConfig();
      const { needsRestart, failed } = daemon.reload(next);
      if (needsRestart.length > 0) {
        log.warn({ needsRestart }, `restart needed to apply ${needsRestart.join(', ')}`);
        status = `${STATUS_RUNNING}; restart to apply ${needsRestart.join(', ')}`;
      }
      // The daemon has logged each refused file with its problems.
      if (failed && failed.length > 0) status = `${status}; kept the previous ${failed.map((f) => f.key).join(', ')} (see log)`;
    } catch (error) {
      const problems = error instanceof ConfigError ? error.problems : [String(error)];
      log.error({ problems }, 'reload refused: keeping the running configuration');
      status = `${STATUS_RUNNING}; last reload refused (invalid configuration)`;
    }
    if (phase === 'running') await notifier.notify('READY=1', `STATUS=${status}`);
  }

  io.onSignal('SIGTERM', () => onStopSignal('SIGTERM'));
  io.onSignal('SIGINT', () => onStopSignal('SIGINT'));
  io.onSignal('SIGHUP', onReloadSignal);

  const started = daemon.start().then(
    () => ({ ok: true as const }),
    (error: unknown) => ({ ok: false as const, error }),
  );
  // A second stop signal while starting ends the wait (and the process).
  const outcome = await Promise.race([started, finished]);
  if (typeof outcome === 'number') return outcome;
  if (!outcome.ok) {
    const { error } = outcome;
    const message = error instanceof Error ? error.message : String(error);
    const code = exitCodeFor(error);
    // What the operator can fix (a port in use, a locked or corrupt store, a
    // bad data directory or file) is one line that names it; a stack trace
    // there would only bury the cause. Anything else is a bug of ours: its stack goes to the log.
    if (error instanceof EdgeMqttError && code !== ExitCode.software) {
      log.fatal({ code: error.code, err: message }, 'start failed');
    } else {
      log.fatal({ err: error }, 'start failed');
    }
    io.stderr.write(`edgemqtt: ${message}\n`);
    return code;
  }
  phase = 'running';
  if (stopSignals > 0) {
    beginStop();
    return finished;
  }
  await notifier.notify('READY=1', `MAINPID=${io.pid}`, `STATUS=${STATUS_RUNNING}`);
  // A stop signal may have arrived while READY=1 was being sent.
  if (phase === 'running') {
    // Not for a store that cannot be written (a full disk): the daemon
    // recovers from that by itself, a restart would only drop every client.
    watchdog = startWatchdog(notifier, io.env, io.pid, () => {
      const report = daemon.readiness();
      return report.ready || report.recovering === true;
    });
    if (reloadWhenRunning) queueReload();
  }
  return finished;
}

/**
 * Says which file the config came from (editing another one changes
 * nothing) and which variables were ignored as not config keys.
 */
function logConfigSources(log: Logger, sources: ConfigSources): void {
  const ignored = ignoredEnvNames(sources.env ?? {});
  const applied = appliedEnvNames(sources.env ?? {}).sort();
  if (sources.file !== undefined) log.info({ file: path.resolve(sources.file), environment: applied }, 'config file read');
  else log.info({ environment: applied }, 'no config file: embedded defaults');
  if (ignored.length > 0) {
    log.warn({ ignored }, 'ignored EDGEMQTT_* variables that name no config section (Kubernetes sets such variables for a Service named edgemqtt)');
  }
}

export function exitCodeFor(error: unknown): number {
  if (error instanceof EdgeMqttError) {
    switch (error.code) {
      case 'EDGEMQTT_CONFIG_INVALID':
      // A password, ACL or certificate file the config names is unusable:
      // a configuration problem too, that a restart would not fix.
      case 'EDGEMQTT_PASSWORD_FILE_INVALID':
      case 'EDGEMQTT_ACL_FILE_INVALID':
      case 'EDGEMQTT_TLS_INVALID':
      case 'EDGEMQTT_TOKEN_FILE_INVALID':
        return ExitCode.config;
      case 'EDGEMQTT_LISTEN_FAILED':
        return ExitCode.unavailable;
      case 'EDGEMQTT_DATA_DIR':
        return ExitCode.cantCreate;
      // Store failures at start-up (src/persistence/errors.ts).
      case 'EDGEMQTT_STORE_LOCKED':
        return ExitCode.tempFail;
      case 'EDGEMQTT_STORE_CORRUPT':
      case 'EDGEMQTT_STORE_INCOMPATIBLE':
        return ExitCode.dataError;
      case 'EDGEMQTT_STORE_UNREADABLE':
        return ExitCode.ioError;
      // The file system is full: freeing space fixes it (a restart alone does not).
      case 'EDGEMQTT_STORE_FULL':
        return ExitCode.storeFull;
      default:
        return ExitCode.software;
    }
  }
  return ExitCode.software;
}

function delay(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms).unref());
}
