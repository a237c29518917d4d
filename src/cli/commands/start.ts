/**
 * `edgemqtt start`: runs the daemon until a stop signal, speaking sd_notify
 * to systemd (READY=1 once listeners are bound, WATCHDOG=1 while healthy,
 * RELOADING=1/READY=1 around SIGHUP, STOPPING=1 on stop).
 */
import { loadConfig, type ConfigSources } from '../../config/load.js';
import { createDaemon } from '../../daemon.js';
import { ConfigError, EdgeMqttError } from '../../errors.js';
import { createLogger } from '../../observability/logger.js';
import { createNotifier, startWatchdog } from '../../systemd/notify.js';
import { ExitCode, type CliIo } from '../io.js';

/** Extra time past shutdown.timeoutSec before a stuck stop is abandoned. */
const STOP_GRACE_MS = 2000;

export async function start(io: CliIo, sources: ConfigSources): Promise<number> {
  const config = await loadConfig(sources);
  const logger = createLogger({ level: config.log.level, journald: Boolean(io.env.JOURNAL_STREAM) });
  const log = logger.child({ component: 'cli' });
  const notifier = createNotifier({
    env: io.env,
    onError: (error) => log.warn({ err: error.message }, 'systemd notification failed'),
  });
  const daemon = await createDaemon(config, { logger });

  let watchdog: ReturnType<typeof startWatchdog> = null;
  // Signals that arrive while starting are honoured once start settles.
  let stopRequested: (code: number) => void = () => {};
  const stopped = new Promise<number>((resolve) => (stopRequested = resolve));
  let stopSignals = 0;
  const onStopSignal = (signal: string) => {
    stopSignals += 1;
    if (stopSignals > 1) {
      log.warn({ signal }, 'second stop signal: exiting now');
      stopRequested(ExitCode.forced);
      return;
    }
    log.info({ signal }, 'stop requested');
    void notifier.notify('STOPPING=1');
    watchdog?.stop();
    const deadline = setTimeout(() => {
      log.error('graceful stop did not finish in time: exiting');
      stopRequested(ExitCode.software);
    }, config.shutdown.timeoutSec * 1000 + STOP_GRACE_MS);
    deadline.unref();
    daemon.stop().then(
      () => stopRequested(ExitCode.ok),
      (error: unknown) => {
        log.error({ err: error }, 'stop failed');
        stopRequested(ExitCode.software);
      },
    );
  };
  io.onSignal('SIGTERM', () => onStopSignal('SIGTERM'));
  io.onSignal('SIGINT', () => onStopSignal('SIGINT'));
  io.onSignal('SIGHUP', () => void reload());

  async function reload(): Promise<void> {
    if (daemon.state !== 'running') return;
    await notifier.notify('RELOADING=1');
    try {
      const next = await loadConfig(sources);
      daemon.reload(next);
    } catch (error) {
      const problems = error instanceof ConfigError ? error.problems : [String(error)];
      log.error({ problems }, 'reload refused: keeping the running configuration');
    }
    await notifier.notify('READY=1');
  }

  try {
    await daemon.start();
  } catch (error) {
    const message = error instanceof Error ? error.message : String(error);
    log.fatal({ err: error }, 'start failed');
    io.stderr.write(`edgemqtt: ${message}\n`);
    return exitCodeFor(error);
  }
  if (stopSignals === 0) {
    await notifier.notify('READY=1', `MAINPID=${io.pid}`, 'STATUS=accepting MQTT connections');
    watchdog = startWatchdog(notifier, io.env, io.pid, () => daemon.readiness().ready);
  } else {
    onStopSignal('(during start)');
  }
  return stopped;
}

export function exitCodeFor(error: unknown): number {
  if (error instanceof EdgeMqttError) {
    switch (error.code) {
      case 'EDGEMQTT_CONFIG_INVALID':
        return ExitCode.config;
      case 'EDGEMQTT_LISTEN_FAILED':
        return ExitCode.unavailable;
      case 'EDGEMQTT_DATA_DIR':
        return ExitCode.cantCreate;
      default:
        return ExitCode.software;
    }
  }
  return ExitCode.software;
}
