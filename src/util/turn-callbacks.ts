/**
 * Callbacks deferred to after this turn's I/O, as setImmediate defers them,
 * but all of a turn's from one setImmediate instead of one each: an
 * Immediate, its arguments and a closure were ~0.3 KB of garbage per QoS 1
 * delivery (bench/persistence-qos1.ts under V8's sampling heap profiler),
 * and each a step of the event loop. One instance per broker part that
 * defers (the seam's writes, aedes-seam/aedes-write.ts; the flow control's
 * hand-overs, client-flow.ts).
 *
 * The callbacks of one turn run in the order deferred, one after another in
 * the first one's place in the event loop's queue of immediates: ahead of
 * immediates queued after it in the same turn (the write coalescer's flush,
 * the group commit's start), where a setImmediate each would have run among
 * them. What they do (the flow control's next message, a publisher's
 * PUBACK) is then written before the flush and stored in the batch being
 * filled: sooner, never in another order. That order is per instance: the
 * callbacks of two instances run instance by instance, which nothing relies
 * on between the seam's writes and the flow control's hand-overs (a
 * delivery's hand-over completes the publish, its write paces the client).
 */

/** A deferred callback: an error (or null) and two arguments given with it, so that no closure is made per call. */
export type Deferred<A, B> = (error: Error | null, a: A, b: B) => void;

/** See the header. */
export class TurnCallbacks {
  #callbacks: Array<Deferred<unknown, unknown>> = [];
  #errors: Array<Error | null> = [];
  #a: unknown[] = [];
  #b: unknown[] = [];
  #scheduled = false;
  readonly #run = (): void => this.#runDue();

  defer<A, B>(callback: Deferred<A, B>, error: Error | null, a: A, b: B): void {
    this.#callbacks.push(callback as Deferred<unknown, unknown>);
    this.#errors.push(error);
    this.#a.push(a);
    this.#b.push(b);
    if (this.#scheduled) return;
    this.#scheduled = true;
    setImmediate(this.#run);
  }

  #runDue(): void {
    const callbacks = this.#callbacks;
    const errors = this.#errors;
    const a = this.#a;
    const b = this.#b;
    this.#callbacks = [];
    this.#errors = [];
    this.#a = [];
    this.#b = [];
    this.#scheduled = false;
    for (let i = 0; i < callbacks.length; i++) {
      try {
        callbacks[i]!(errors[i]!, a[i], b[i]);
      } catch (error) {
        // Each was a setImmediate of its own: the ones after a callback that threw still run, a turn later.
        for (let j = i + 1; j < callbacks.length; j++) this.defer(callbacks[j]!, errors[j]!, a[j], b[j]);
        throw error;
      }
    }
  }
}

