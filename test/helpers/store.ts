/**
 * A LevelPersistence on a temporary store, with a readable log and a clock,
 * and the parts of aedes it talks to, for tests of the store on its own.
 */
import type { Test } from 'tap';
import { EventEmitter } from 'node:events';
import path from 'node:path';
import { createLogger } from '../../src/observability/logger.js';
import { createLevelPersistence, type LevelPersistence, type LevelPersistenceOptions } from '../../src/persistence/index.js';
import { tempDir } from './daemon.js';

export interface LogRecord {
  /** The level's name: 'info', 'warn', ... */
  level: string;
  msg: string;
  [key: string]: unknown;
}

/** A logger whose lines the test can read. */
export function capturingLogger() {
  const lines: LogRecord[] = [];
  const logger = createLogger({
    level: 'debug',
    destination: { write: (line: string) => void lines.push(JSON.parse(line) as LogRecord) },
  });
  return { logger, lines, messages: (msg: string) => lines.filter((line) => line.msg === msg) };
}

export interface Harness {
  dir: string;
  lines: LogRecord[];
  messages(msg: string): LogRecord[];
  clock: { now: number };
  /** A persistence on the harness' store, stopped by the test's teardown. */
  create(options?: Partial<LevelPersistenceOptions>): LevelPersistence;
  open(options?: Partial<LevelPersistenceOptions>): Promise<LevelPersistence>;
}

export function harness(t: Test): Harness {
  const dir = path.join(tempDir(t, 'edgemqtt-store-'), 'store');
  const { logger, lines, messages } = capturingLogger();
  const clock = { now: Date.UTC(2025, 0, 1) };
  const create = (options: Partial<LevelPersistenceOptions> = {}) => {
    const persistence = createLevelPersistence({ path: dir, ...options }, { logger, now: () => clock.now });
    t.teardown(() => persistence.stop());
    return persistence;
  };
  return {
    dir,
    lines,
    messages,
    clock,
    create,
    async open(options) {
      const persistence = create(options);
      await persistence.start();
      return persistence;
    },
  };
}

/** The parts of an aedes broker the persistence looks at. */
export function fakeBroker(id = 'broker-1') {
  return Object.assign(new EventEmitter(), { id, counter: 0, clients: Object.create(null) as Record<string, unknown> });
}

export function publish(topic: string, payload: string, extra: Record<string, unknown> = {}) {
  return { cmd: 'publish', topic, payload: Buffer.from(payload), qos: 1, retain: false, dup: false, ...extra };
}

export async function collect<T>(stream: AsyncIterable<T>): Promise<T[]> {
  const items: T[] = [];
  for await (const item of stream) items.push(item);
  return items;
}
