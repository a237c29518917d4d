/**
 * The broker process for the benchmark: edgemqtt through its public embedding
 * API (`createDaemon`, exactly what the CLI runs), on loopback with OS-chosen
 * ports. Run by run.ts as a child process, like mosquitto, so that the broker
 * has its own event loop and its CPU time is measured apart from the load
 * generator's. With a variant other than `daemon` it runs one of the
 * experiments in variants.ts instead.
 *
 * IPC: sends {type:'ready', tcpPort, wsPort, wsPath} once listening; on
 * {type:'stop'} (or SIGTERM) stops gracefully and exits, which also writes
 * the CPU profile when started with --cpu-prof.
 *
 * BENCH_HEAP_SAMPLE=DIR: V8's sampling heap profiler runs from
 * BENCH_HEAP_SAMPLE_DELAY_SEC (default 20) after start until the stop, and
 * its profile is written to DIR/edgemqtt-PID.heapprofile (Chrome DevTools
 * opens it). It counts objects that were promoted to the old space and died
 * there (`includeObjectsCollectedByMajorGC`) beside the live ones, not those
 * the young generation's scavenges collected: what grows the old space
 * between major collections under steady load.
 */
import { writeFileSync } from 'node:fs';
import { Session } from 'node:inspector/promises';
import path from 'node:path';
import { createDaemon } from '../src/index.js';
import { startRelayFloor } from './relay-floor.js';
import { applyPatches, startBareAedes, variantOf, type BenchServer } from './variants.js';

interface ServerOptions {
  dataDir: string;
  /** A key of VARIANTS; `daemon` (default) is edgemqtt as shipped. */
  variant?: string;
  /** The `limits` section; default: the connection rate lifted, see below. */
  limits?: Record<string, unknown>;
}

async function startDaemon(dataDir: string, limits: Record<string, unknown> | undefined): Promise<BenchServer> {
  const daemon = await createDaemon({
    dataDir,
    log: { level: 'warn' },
    mqtt: { host: '127.0.0.1', port: 0 },
    http: { host: '127.0.0.1', port: 0 },
    // The load generator opens 100+ connections at once from one address,
    // scenario after scenario; everything else stays at its default.
    // (scale.ts passes {} to run the product's default limits.)
    limits: limits ?? { connectRatePerAddressPerSec: 0 },
  });
  await daemon.start();
  const { mqtt, http } = daemon.addresses();
  return {
    tcpPort: mqtt?.port ?? 0,
    wsPort: http?.port ?? 0,
    wsPath: daemon.config.http.websocket.path,
    stop: () => daemon.stop(),
  };
}

/** Starts BENCH_HEAP_SAMPLE's profiler after its delay; the returned function stops it and writes the profile. */
function sampleHeap(dir: string): () => Promise<void> {
  const session = new Session();
  session.connect();
  let sampling: Promise<unknown> | undefined;
  const timer = setTimeout(
    () => {
      sampling = session.post('HeapProfiler.startSampling', { samplingInterval: 16_384, includeObjectsCollectedByMajorGC: true });
    },
    Number(process.env.BENCH_HEAP_SAMPLE_DELAY_SEC ?? 20) * 1000,
  );
  timer.unref();
  return async () => {
    clearTimeout(timer);
    if (sampling) {
      await sampling;
      const { profile } = await session.post('HeapProfiler.stopSampling');
      writeFileSync(path.join(dir, `edgemqtt-${process.pid}.heapprofile`), JSON.stringify(profile));
    }
    session.disconnect();
  };
}

async function main(): Promise<void> {
  const options = JSON.parse(process.argv[2] ?? '{}') as ServerOptions;
  const variant = variantOf(options.variant ?? 'daemon');
  applyPatches(variant);
  const server =
    variant.base === 'daemon'
      ? await startDaemon(options.dataDir, options.limits)
      : variant.base === 'aedes'
        ? await startBareAedes()
        : await startRelayFloor({ raw: variant.base === 'relay-raw' });
  const heapDir = process.env.BENCH_HEAP_SAMPLE;
  const stopSampling = heapDir ? sampleHeap(heapDir) : undefined;

  let stopping = false;
  const stop = async (): Promise<void> => {
    if (stopping) return;
    stopping = true;
    await stopSampling?.();
    await server.stop();
    process.exit(0);
  };
  process.on('message', (message: { type?: string }) => {
    if (message.type === 'stop') void stop();
  });
  process.on('SIGTERM', () => void stop());
  process.on('disconnect', () => void stop());
  process.send?.({ type: 'ready', tcpPort: server.tcpPort, wsPort: server.wsPort, wsPath: server.wsPath });
}

main().catch((error: unknown) => {
  console.error('bench broker failed:', error);
  process.exit(1);
});
