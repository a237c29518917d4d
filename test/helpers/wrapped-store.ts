/**
 * The broker, the LevelDB persistence and a TCP listener wired as the daemon
 * wires them, with the store's batch() wrapped so a test can hold a batch
 * (the fsync "takes" as long as the test wants), fail one, or see its keys.
 */
import type { Test } from 'tap';
import path from 'node:path';
import { createBroker } from '../../src/broker/broker.js';
import { validateConfig } from '../../src/config/load.js';
import { createLogger } from '../../src/observability/logger.js';
import { createLevelPersistence, type SyncPolicy } from '../../src/persistence/index.js';
import type { BatchOp } from '../../src/persistence/group-commit.js';
import { createTcpListener } from '../../src/transports/tcp.js';
import { testConfig } from './daemon.js';
import { eventually } from './mqtt.js';

export interface Harness {
  url: string;
  /** Namespace letters of the ops of each batch handed to LevelDB, in order. */
  batches: string[][];
  /** Batches handed to LevelDB from now on wait until release(). */
  hold(): void;
  release(): void;
  /** The next batch fails. */
  failNext(): void;
  /** Resolves once the store has reopened after a failed write (writes are refused until then). */
  writable(): Promise<void>;
}

const logger = createLogger({ level: (process.env.EDGEMQTT_TEST_LOG as 'debug' | undefined) ?? 'silent' });

/** Broker, LevelDB persistence and TCP listener as the daemon wires them, with a wrapped batch(). */
export async function startWithWrappedStore(t: Test, sync: SyncPolicy = 'batch'): Promise<Harness> {
  const config = validateConfig(testConfig(t, { persistence: { sync } }));
  const persistence = createLevelPersistence({ path: path.join(config.dataDir, 'store'), ...config.persistence }, { logger });
  await persistence.start();
  const batches: string[][] = [];
  let gate: { promise: Promise<void>; open(): void } | undefined;
  let failNext = false;
  const db = persistence.db as unknown as { batch(ops: BatchOp[], options: { sync: boolean }): Promise<void> };
  const batch = db.batch.bind(db);
  db.batch = async (ops, options) => {
    batches.push(ops.map((op) => String.fromCharCode(op.key[0]!)));
    if (gate) await gate.promise;
    if (failNext) {
      failNext = false;
      throw new Error('injected write failure');
    }
    return batch(ops, options);
  };
  const broker = createBroker(config, { logger, persistence });
  await broker.start();
  const listener = createTcpListener(config, { broker, logger });
  await listener.start();
  t.teardown(async () => {
    gate?.open();
    listener.stopAccepting();
    await broker.stop();
    await listener.stop();
    await persistence.stop();
  });
  return {
    url: `mqtt://127.0.0.1:${listener.address()!.port}`,
    batches,
    hold() {
      let open!: () => void;
      const promise = new Promise<void>((resolve) => (open = resolve));
      gate = { promise, open };
    },
    writable() {
      return eventually(() => persistence.writeFailure === undefined, 5000, 'the store to reopen');
    },
    release() {
      gate?.open();
      gate = undefined;
    },
    failNext() {
      failNext = true;
    },
  };
}
