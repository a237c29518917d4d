/**
 * Durable enqueue throughput of the LevelDB persistence per sync policy: the
 * write a QoS 1 publish to an offline persistent subscriber costs before its
 * PUBACK may go out. `concurrency` publishes are in flight at once (think: that
 * many publishing clients, each waiting for its PUBACK); each one awaits its
 * enqueue, then issues the next.
 *
 *   npx tsc -p tsconfig.bench.json && node dist-bench/bench/persistence.js \
 *     [--messages 20000] [--concurrency 1,16,128] [--payload 64] [--policies always,batch,os]
 *   (or straight from source: node --import @tapjs/typescript/import bench/persistence.ts …)
 *
 * `always` is capped by --always-messages (default 2000): one fsync per message.
 * `--recovery-records N` also measures start-up on a store holding N queued
 * messages (spread over 1,000 offline clients) and N/2 retained messages.
 */
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { parseArgs } from 'node:util';
import { createLogger } from '../src/observability/logger.js';
import { createLevelPersistence, type SyncPolicy } from '../src/persistence/index.js';

interface Result {
  policy: SyncPolicy;
  concurrency: number;
  messages: number;
  seconds: number;
  batches: number;
  meanCommitMs: number;
  maxCommitMs: number;
}

async function run(policy: SyncPolicy, concurrency: number, messages: number, payloadBytes: number): Promise<Result> {
  const dir = await mkdtemp(path.join(tmpdir(), 'edgemqtt-bench-'));
  const persistence = createLevelPersistence(
    { path: path.join(dir, 'store'), sync: policy, maxQueuedMessagesPerClient: 0, maxQueuedBytesPerClient: 0 },
    { logger: createLogger({ level: 'silent' }) },
  );
  try {
    await persistence.start();
    const payload = Buffer.alloc(payloadBytes, 0x61);
    let next = 0;
    const started = performance.now();
    async function publisher(index: number): Promise<void> {
      const subscriber = [{ clientId: `subscriber-${index % 8}` }];
      for (let n = next++; n < messages; n = next++) {
        await persistence.outgoingEnqueueCombi(subscriber, {
          cmd: 'publish',
          topic: `site/line-${index}/value`,
          payload,
          qos: 1,
          retain: false,
          dup: false,
          brokerId: 'bench',
          brokerCounter: n + 1,
        });
      }
    }
    await Promise.all(Array.from({ length: concurrency }, (_, i) => publisher(i)));
    const seconds = (performance.now() - started) / 1000;
    const commit = persistence.stats().commit!;
    return {
      policy,
      concurrency,
      messages,
      seconds,
      batches: commit.batches,
      meanCommitMs: commit.commitMs.sum / Math.max(1, commit.commitMs.count),
      maxCommitMs: commit.commitMs.max,
    };
  } finally {
    await persistence.stop();
    await rm(dir, { recursive: true, force: true });
  }
}

async function recovery(records: number, payloadBytes: number): Promise<void> {
  const dir = await mkdtemp(path.join(tmpdir(), 'edgemqtt-bench-'));
  const options = { path: path.join(dir, 'store'), sync: 'os' as const, maxQueuedMessagesPerClient: 0, maxQueuedBytesPerClient: 0 };
  const logger = createLogger({ level: 'silent' });
  try {
    const filler = createLevelPersistence(options, { logger });
    await filler.start();
    const payload = Buffer.alloc(payloadBytes, 0x61);
    const writes: Array<Promise<void>> = [];
    for (let n = 0; n < records; n++) {
      const packet = { cmd: 'publish', topic: `site/${n % 100}/value`, payload, qos: 1, brokerId: 'bench', brokerCounter: n + 1 };
      writes.push(filler.outgoingEnqueueCombi([{ clientId: `client-${n % 1000}` }], packet));
      if (n % 2 === 0) writes.push(filler.storeRetained({ ...packet, topic: `retained/${n}`, retain: true }));
      if (writes.length >= 1000) await Promise.all(writes.splice(0));
    }
    await Promise.all(writes);
    await filler.stop();
    const started = performance.now();
    const reader = createLevelPersistence(options, { logger });
    await reader.start();
    const ms = performance.now() - started;
    const stats = reader.stats();
    await reader.stop();
    console.log(
      `recovery: ${stats.recovery.records} records (${stats.queuedEntries} queued, ${stats.retainedMessages} retained) ` +
        `in ${Math.round(ms)} ms start-up (${stats.recovery.durationMs} ms reading)`,
    );
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}

async function main(): Promise<void> {
  const { values } = parseArgs({
    options: {
      messages: { type: 'string', default: '20000' },
      'always-messages': { type: 'string', default: '2000' },
      concurrency: { type: 'string', default: '1,16,128' },
      payload: { type: 'string', default: '64' },
      policies: { type: 'string', default: 'always,batch,os' },
      'recovery-records': { type: 'string', default: '0' },
    },
  });
  const policies = values.policies.split(',') as SyncPolicy[];
  const concurrencies = values.concurrency.split(',').map(Number);
  const payload = Number(values.payload);
  const results: Result[] = [];
  for (const concurrency of concurrencies) {
    for (const policy of policies) {
      const messages = Number(policy === 'always' ? values['always-messages'] : values.messages);
      const result = await run(policy, concurrency, messages, payload);
      results.push(result);
      console.log(
        [
          `policy=${policy.padEnd(6)}`,
          `concurrency=${String(concurrency).padStart(4)}`,
          `msgs/s=${Math.round(messages / result.seconds).toString().padStart(7)}`,
          `batches=${String(result.batches).padStart(6)}`,
          `msgs/batch=${(messages / result.batches).toFixed(1).padStart(6)}`,
          `commit mean=${result.meanCommitMs.toFixed(2)} ms max=${result.maxCommitMs.toFixed(1)} ms`,
        ].join('  '),
      );
    }
  }
  for (const concurrency of concurrencies) {
    const rate = (policy: SyncPolicy) => {
      const result = results.find((r) => r.policy === policy && r.concurrency === concurrency);
      return result ? result.messages / result.seconds : undefined;
    };
    const always = rate('always');
    const batch = rate('batch');
    const os = rate('os');
    if (always && batch) console.log(`concurrency=${concurrency}: batch/always = ${(batch / always).toFixed(1)}x`);
    if (os && batch) console.log(`concurrency=${concurrency}: os/batch = ${(os / batch).toFixed(1)}x`);
  }
  const recoveryRecords = Number(values['recovery-records']);
  if (recoveryRecords > 0) await recovery(recoveryRecords, payload);
}

await main();
