/**
 * Feeding a ProtocolGuard chunk by chunk, as a connection would, and the
 * stream properties protocol-guard.test.ts (3.1.1) and
 * protocol-guard-mqtt5.test.ts (5.0) prove alike for each version.
 */
import type { Test } from 'tap';
import * as mqttPacket from 'mqtt-packet';
import { ProtocolGuard, type ProtocolGuardOptions, type Verdict } from '../../src/broker/protocol-guard/index.js';
import { pingreq } from './packets.js';
import { random } from './random.js';

/** The first verdict and the index of the chunk that brought it, or null when every chunk passed. */
export function feed(guard: ProtocolGuard, chunks: Uint8Array[]): { at: number; verdict: Verdict } | null {
  for (let i = 0; i < chunks.length; i++) {
    const verdict = guard.inspect(chunks[i] as Uint8Array);
    if (verdict !== null) return { at: i, verdict };
  }
  return null;
}

/**
 * A valid stream of `count` packets passes whole (each packet seen once),
 * split in two at every byte up to `denseUpTo` and every `step` bytes after
 * it, and byte by byte. Returns the guard that saw it whole.
 */
export function passesHoweverSplit(
  t: Test,
  options: ProtocolGuardOptions,
  stream: Buffer,
  count: number,
  { denseUpTo, step }: { denseUpTo: number; step: number },
): ProtocolGuard {
  const whole = new ProtocolGuard(options);
  let packets = 0;
  whole.listener = { onPacket: () => packets++ };
  t.equal(feed(whole, [stream]), null);
  t.equal(packets, count, 'every packet seen once');
  for (let split = 1; split < stream.length; split += split < denseUpTo ? 1 : step) {
    const verdict = feed(new ProtocolGuard(options), [stream.subarray(0, split), stream.subarray(split)]);
    if (verdict !== null) {
      t.fail(`split at ${split}: ${JSON.stringify(verdict)}`);
      return whole;
    }
  }
  const bytewise = new ProtocolGuard(options);
  let seen = 0;
  bytewise.listener = { onPacket: () => seen++ };
  t.equal(feed(bytewise, [...stream].map((byte) => Uint8Array.of(byte))), null, 'byte by byte');
  t.equal(seen, count);
  return whole;
}

/**
 * `bad` after the valid `prefix` (and a PINGREQ after it) is refused under
 * `rule` wherever the bytes are split, and the bytes handed over never
 * include the whole bad packet nor fall short of the prefix.
 */
export function refusedHoweverSplit(t: Test, options: ProtocolGuardOptions, prefix: Buffer, bad: Buffer, rule: string): void {
  const all = Buffer.concat([prefix, bad, pingreq()]);
  for (let split = 0; split <= all.length; split++) {
    const guard = new ProtocolGuard(options);
    const chunks = split === 0 ? [all] : [all.subarray(0, split), all.subarray(split)];
    const result = feed(guard, chunks);
    if (!result || result.verdict.kind !== 'protocol' || result.verdict.rule !== rule) {
      t.fail(`split at ${split}: ${JSON.stringify(result)}`);
      return;
    }
    // Bytes handed to the parser: earlier chunks in full, plus validBytes of the verdict's chunk.
    const handedOver = chunks.slice(0, result.at).reduce((sum, chunk) => sum + chunk.length, 0) + result.verdict.validBytes;
    if (handedOver > prefix.length + bad.length - 1 || handedOver < Math.min(prefix.length, split || prefix.length)) {
      t.fail(`split at ${split}: handed over ${handedOver} bytes; the bad packet ends at ${prefix.length + bad.length}`);
      return;
    }
  }
  t.pass('same verdict at every split; the bad packet is never handed over whole');
}

export interface FuzzRun {
  /** Seed of the random sequence (one per version, so each file's runs stay the same). */
  seed: number;
  runs: number;
  options: ProtocolGuardOptions;
  /** A valid stream to mutate, drawn with `next`. */
  stream: (next: () => number) => Buffer;
  /** The protocol version mqtt-packet parses what the guard let through as. */
  parseAs: (guard: ProtocolGuard) => 4 | 5;
}

/**
 * Mutates valid streams (flips, inserts or truncates a few bytes), splits
 * each in two at random: the guard never throws, and whatever it lets
 * through parses cleanly with mqtt-packet. Both outcomes must be common.
 */
export function fuzzAgainstParser(t: Test, run: FuzzRun): void {
  const next = random(run.seed);
  let accepted = 0;
  let refused = 0;
  for (let index = 0; index < run.runs; index++) {
    let mutated = Buffer.from(run.stream(next));
    const edits = 1 + Math.floor(next() * 4);
    for (let e = 0; e < edits; e++) {
      const at = Math.floor(next() * mutated.length);
      const kind = next();
      if (kind < 0.6) mutated[at] = Math.floor(next() * 256);
      else if (kind < 0.8) mutated = Buffer.concat([mutated.subarray(0, at), Buffer.from([Math.floor(next() * 256)]), mutated.subarray(at)]);
      else mutated = mutated.subarray(0, at);
    }
    const guard = new ProtocolGuard(run.options);
    const split = Math.floor(next() * mutated.length);
    const chunks = [mutated.subarray(0, split), mutated.subarray(split)];
    let result: ReturnType<typeof feed>;
    try {
      result = feed(guard, chunks);
    } catch (error) {
      t.fail(`run ${index} threw ${String(error)} on ${mutated.toString('hex')}`);
      return;
    }
    // Left to aedes, which answers CONNACK 0x01 or (mqtt-packet) refuses the level.
    if (guard.unsupportedLevel) continue;
    const handedOver = result
      ? Buffer.concat([...chunks.slice(0, result.at), chunks[result.at]!.subarray(0, result.verdict.validBytes)])
      : mutated;
    if (result) refused++;
    else accepted++;
    const parser = mqttPacket.parser({ protocolVersion: run.parseAs(guard) });
    const errors: string[] = [];
    parser.on('error', (error: Error) => errors.push(error.message));
    parser.parse(handedOver);
    if (errors.length > 0) {
      t.fail(`run ${index}: guard passed bytes mqtt-packet rejects (${errors.join('; ')}): ${handedOver.toString('hex')}`);
      return;
    }
  }
  t.ok(accepted > run.runs / 20 && refused > run.runs / 20, `both outcomes exercised (${accepted} passed, ${refused} refused)`);
}
