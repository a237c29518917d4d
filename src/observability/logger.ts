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

/** pino level name → syslog priority (RFC 5424); trace, debug and anything unknown → 7. */
const SYSLOG_PRIORITY: Readonly<Record<string, number>> = { fatal: 2, error: 3, warn: 4, info: 6 };

/** Where the level name starts: pino writes `{"level":"info",` first (formatters.level below). */
const LEVEL_AT = '{"level":"'.length;

function journaldStream(target: DestinationStream): DestinationStream {
  return {
    write(line: string) {
      const name = line.slice(LEVEL_AT, line.indexOf('"', LEVEL_AT));
      target.write(`<${SYSLOG_PRIORITY[name] ?? 7}>${line}`);
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
      // `"level":"info"`, not pino's 30: an operator reads names, and jq filters on them.
      formatters: { level: (label) => ({ level: label }) },
    },
    destination,
  );
}
