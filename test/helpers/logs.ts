/**
 * A daemon logger that keeps its lines in memory, for tests that assert what
 * was logged (limit hits, protocol violations).
 */
import { createLogger, type Logger } from '../../src/observability/logger.js';

export interface LogLine {
  /** The level's name: 'info', 'warn', ... */
  level: string;
  msg: string;
  [field: string]: unknown;
}

export interface CapturedLogs {
  logger: Logger;
  readonly lines: LogLine[];
  /** Lines whose message contains `text` (and, when given, whose fields match `fields`). */
  find(text: string, fields?: Record<string, unknown>): LogLine[];
}

/** Level names as the log writes them. */
export const ERROR = 'error';
export const WARN = 'warn';
export const INFO = 'info';

export function captureLogs(level: 'info' | 'debug' = 'info'): CapturedLogs {
  const lines: LogLine[] = [];
  const logger = createLogger({ level, destination: { write: (line: string) => void lines.push(JSON.parse(line) as LogLine) } });
  return {
    logger,
    lines,
    find(text, fields = {}) {
      return lines.filter((line) => line.msg.includes(text) && Object.entries(fields).every(([key, value]) => line[key] === value));
    },
  };
}
