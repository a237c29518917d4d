/**
 * sd_notify(3) for a Type=notify service. Node cannot send on a unix datagram
 * socket, so each notification runs `systemd-notify`, which systemd ships
 * wherever it sets NOTIFY_SOCKET. The message then comes from a child process,
 * which is why the unit sets NotifyAccess=all; systemd-notify (systemd ≥ 246)
 * waits until the manager has read the message, so it is never dropped for
 * having outlived its sender.
 */
import { spawn } from 'node:child_process';

export interface Notifier {
  /** True when a service manager is listening (NOTIFY_SOCKET is set). */
  readonly enabled: boolean;
  /** Sends `KEY=VALUE` assignments; resolves once sent (never rejects). */
  notify(...assignments: string[]): Promise<void>;
}

export interface NotifierOptions {
  env: Record<string, string | undefined>;
  /** Told when a notification could not be sent. */
  onError?: (error: Error) => void;
  /** The notify command, for systems where it is not on PATH. */
  command?: string;
}

export function createNotifier(options: NotifierOptions): Notifier {
  const socket = options.env.NOTIFY_SOCKET;
  const command = options.command ?? 'systemd-notify';
  return {
    enabled: Boolean(socket),
    notify(...assignments) {
      if (!socket) return Promise.resolve();
      return new Promise((resolve) => {
        const child = spawn(command, assignments, {
          env: { PATH: options.env.PATH ?? '/usr/bin:/bin', NOTIFY_SOCKET: socket },
          stdio: ['ignore', 'ignore', 'pipe'],
        });
        let stderr = '';
        child.stderr.setEncoding('utf8').on('data', (text: string) => (stderr += text));
        child.once('error', (error) => {
          options.onError?.(error);
          resolve();
        });
        child.once('close', (code) => {
          if (code !== 0) options.onError?.(new Error(`${command} exited ${code}: ${stderr.trim()}`));
          resolve();
        });
      });
    },
  };
}

export interface Watchdog {
  stop(): void;
}

/**
 * Pings WATCHDOG=1 at half of WatchdogSec (from WATCHDOG_USEC), but only while
 * `healthy()` holds, so systemd restarts a daemon that is alive yet broken.
 * Returns null when the service has no watchdog or it is meant for another PID.
 */
export function startWatchdog(
  notifier: Notifier,
  env: Record<string, string | undefined>,
  pid: number,
  healthy: () => boolean,
): Watchdog | null {
  const usec = Number(env.WATCHDOG_USEC);
  if (!notifier.enabled || !Number.isFinite(usec) || usec <= 0) return null;
  if (env.WATCHDOG_PID !== undefined && Number(env.WATCHDOG_PID) !== pid) return null;
  // A ping still being sent (systemd-notify waits for the manager to read
  // it) is not doubled up: under load, pings would otherwise pile up as
  // processes.
  let inFlight = false;
  const timer = setInterval(() => {
    if (inFlight || !healthy()) return;
    inFlight = true;
    void notifier.notify('WATCHDOG=1').then(() => (inFlight = false));
  }, Math.max(1, Math.floor(usec / 2000)));
  timer.unref();
  return { stop: () => clearInterval(timer) };
}
