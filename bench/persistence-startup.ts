/**
 * Start-up with a large store: the time from `edgemqtt start` to "edgemqtt
 * ready" (recovery reads every record once and rebuilds the in-memory
 * indexes) with QUEUED queued messages for CLIENTS offline persistent
 * sessions, and the memory that takes.
 *
 * The store is built directly (the persistence's own key layout and codec,
 * no broker), then the daemon is started on it through the CLI, twice: the
 * second start shows the cost once the files are in the page cache.
 *
 *   npm run build && npx tsc -p tsconfig.bench.json && node dist-bench/bench/persistence-startup.js
 *   env: BENCH_QUEUED=1000000 BENCH_CLIENTS=1000 BENCH_PAYLOAD_BYTES=64
 */
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { Level } from 'level';
import { createLogger } from '../src/observability/logger.js';
import { createLevelPersistence } from '../src/persistence/index.js';
import { encodePacket } from '../src/persistence/codec.js';
import { outgoingKey } from '../src/persistence/keys.js';
import { rssMiB, startEdgemqtt } from './persistence-load.js';

const QUEUED = Number(process.env.BENCH_QUEUED ?? 1_000_000);
const CLIENTS = Number(process.env.BENCH_CLIENTS ?? 1000);
const PAYLOAD = Buffer.alloc(Number(process.env.BENCH_PAYLOAD_BYTES ?? 64), 0x63);

async function buildStore(dataDir: string): Promise<number> {
  const started = performance.now();
  const store = path.join(dataDir, 'store');
  // Through the persistence first: format marker, sessions, subscriptions.
  const persistence = createLevelPersistence({ path: store, sync: 'os' }, { logger: createLogger({ level: 'silent' }) });
  await persistence.start();
  for (let c = 0; c < CLIENTS; c++) {
    await persistence.addSubscriptions({ id: `device-${c}` }, [{ topic: `cmd/device-${c}/#`, qos: 1 }]);
  }
  await persistence.stop();
  const db = new Level<Buffer, Buffer>(store, { keyEncoding: 'buffer', valueEncoding: 'buffer' });
  await db.open();
  let ops: Array<{ type: 'put'; key: Buffer; value: Buffer }> = [];
  for (let n = 0; n < QUEUED; n++) {
    const client = n % CLIENTS;
    const seq = n + 1;
    const packet = {
      cmd: 'publish',
      brokerId: 'bench-broker',
      brokerCounter: seq,
      topic: `cmd/device-${client}/set`,
      payload: PAYLOAD,
      qos: 1,
      retain: false,
      dup: false,
      messageId: undefined,
    };
    ops.push({ type: 'put', key: outgoingKey(`device-${client}`, seq), value: encodePacket(packet) });
    if (ops.length === 10_000) {
      await db.batch(ops);
      ops = [];
    }
  }
  if (ops.length > 0) await db.batch(ops);
  await db.close();
  return (performance.now() - started) / 1000;
}

async function main(): Promise<void> {
  const root = await mkdtemp(path.join(tmpdir(), 'edgemqtt-bench-startup-'));
  try {
    const dataDir = path.join(root, 'data');
    const buildSec = await buildStore(dataDir);
    console.log(`built a store with ${QUEUED} queued messages (${PAYLOAD.length} B payloads) for ${CLIENTS} offline sessions in ${buildSec.toFixed(1)} s`);
    for (const run of ['first start', 'second start']) {
      // The per-client limit must hold what was queued, or start-up trims it.
      const broker = await startEdgemqtt(dataDir, {
        persistence: { maxQueuedMessagesPerClient: 0, maxQueuedBytesPerClient: 0 },
      });
      const rss = rssMiB(broker.pid);
      await broker.stop();
      console.log(
        `  ${run}: ready after ${(broker.startMs / 1000).toFixed(2)} s (process start included; recovery ` +
          `${broker.recovery?.durationMs} ms for ${broker.recovery?.records} records), resident ${rss.toFixed(0)} MiB`,
      );
    }
  } finally {
    await rm(root, { recursive: true, force: true });
  }
}

main().catch((error: unknown) => {
  console.error(error);
  process.exit(1);
});
