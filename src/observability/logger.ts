/**
 * JSON logs on stdout (pino). Under systemd's journal (`$JOURNAL_STREAM` set)
 * each line starts with a `<N>` syslog priority, which journald strips and
 * stores as the entry's PRIORITY, so `journalctl -p warning` works.
 */
import { pino, type Logger, type DestinationStream } from 'pino';

export type { Logger };

/**
 * pino's levels, most severe first, and `silent`. Declared here, not in the
 * config schema (which takes its `log.level` values from it): every layer
 * logs, so the logger sits below config and imports nothing of ours.
 */
export const LOG_LEVELS = ['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent'] as const;
export type LogLevel = (typeof LOG_LEVELS)[number];

export interface LoggerOptions {
  level: LogLevel;
  /** Where lines go; standard output (fd 1) when omitted. */
  destination?: DestinationStream;
  /** Prefix journald priorities. */
  journald?: boolean;
}

// pino level number → syslog priority (RFC 5424): trace/debug → 7, info → 6,
// warn → 4, error → 3, fatal → 2.
function syslogPriority(level: number): number {
  if (level >= 60) return 2;
  if (level >= 50) return 3;
  if (level >= 40) return 4;
  if (level >= 30) return 6;
  return 7;
}

function journaldStream(target: DestinationStream): DestinationStream {
  return {
    write(line: string) {
      // pino writes `{"level":N,` first, so the number sits at a fixed offset.
      const level = Number.parseInt(line.slice(9, 11), 10);
      target.write(`<${syslogPriority(level)}>${line}`);
    },
  };
}

export function createLogger(options: LoggerOptions): Logger {
  const target = options.destination ?? pino.destination({ fd: 1, sync: true });
  const destination = options.journald ? journaldStream(target) : target;
  return pino(
    {
      level: options.level,
      base: { service: 'edgemqtt' },
      timestamp: pino.stdTimeFunctions.isoTime,
    },
    destination,
  );
}
