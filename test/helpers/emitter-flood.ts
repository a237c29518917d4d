/**
 * Fills an aedes message bus (mqemitter) past its concurrency with messages
 * that complete at once, behind ones that complete a turn later: the queue
 * mqemitter drains from each completion (src/broker/aedes-seam/emitter-depth.ts).
 */
import type { Aedes } from 'aedes';

interface Bus {
  on(topic: string, handler: (packet: unknown, done: () => void) => void, done?: () => void): void;
  emit(packet: object, done?: (error?: Error) => void): void;
  concurrency: number;
}

/** Resolves with how many of the messages completed, and the error thrown while draining, if any. */
export function floodEmitter(aedes: Aedes, queued = 20_000): Promise<{ completed: number; total: number; error: unknown }> {
  const bus = (aedes as unknown as { mq: Bus }).mq;
  const slow = bus.concurrency;
  const total = slow + queued;
  let completed = 0;
  let error: unknown;
  return new Promise((resolve) => {
    const finish = () => {
      completed++;
      if (completed === total) resolve({ completed, total, error });
    };
    bus.on('flood/slow', (_packet, done) =>
      setImmediate(() => {
        try {
          done();
        } catch (thrown) {
          // The drain runs on this stack: a RangeError lands here.
          error ??= thrown;
          resolve({ completed, total, error });
        }
      }),
    );
    for (let i = 0; i < slow; i++) bus.emit({ topic: 'flood/slow', payload: Buffer.alloc(0) }, finish);
    // No subscriber: each completes as soon as it is started.
    for (let i = 0; i < queued; i++) bus.emit({ topic: 'flood/none', payload: Buffer.alloc(0) }, finish);
  });
}
