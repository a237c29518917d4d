/**
 * A new client's parser made with a plain BufferList from the start.
 *
 * aedes' Client constructor (lib/client.js) makes its parser with
 * mqtt-packet's `mqtt.parser()`, whose `_resetState` (parser.js) gives it a
 * bl BufferListStream: a whole Duplex stream (its readable and writable
 * state, its listener table), of which the parser uses only the BufferList
 * methods. lightenClient (client.ts) puts a plain BufferList in its place
 * right after, so each connection made that stream only to drop it: ~3% of
 * the broker's CPU in a connect storm, and garbage.
 *
 * Here aedes' `handle` runs with mqtt-packet's exported `parser` (the
 * module's exports object, as aedes reads it per call) replaced by one that
 * makes the parser as mqtt-packet's does (parser.js `static parser` and
 * `_resetState`: the same fields in the same order) but with a plain
 * BufferList (bl's own class, from the same module); the original is put
 * back before `handle` returns. Nothing else runs meanwhile (handle is
 * synchronous), so no other user of mqtt-packet in the process (mqtt.js
 * clients) ever sees it. The classes are learned from the first parser aedes
 * makes as it is; until then, or if mqtt-packet's parser is not what this
 * was written for, nothing is replaced. Canary:
 * test/aedes-canaries-client.test.ts.
 */
import { createRequire } from 'node:module';

/** The parser fields mqtt-packet's `parser()` sets (parser.js). */
interface ParserState {
  settings: object;
  _states: readonly string[];
  packet: { constructor: unknown };
  error: Error | null;
  _list: { constructor: unknown };
  _stateCounter: number;
}

interface MqttPacketModule {
  parser(options?: object): ParserState;
}

interface Learned {
  Parser: new () => ParserState;
  Packet: new () => ParserState['packet'];
  List: new () => ParserState['_list'];
  original: MqttPacketModule['parser'];
}

/** mqtt-packet's exports as aedes imports them (its default import of a CommonJS module is this object). */
const mqttPacket = createRequire(createRequire(import.meta.url).resolve('aedes'))('mqtt-packet') as MqttPacketModule;

let learned: Learned | undefined | null;

/** mqtt-packet's `parser()` (parser.js `static parser`, `_resetState`) with a plain BufferList. */
function plainListParser(options?: object): ParserState {
  const { Parser, Packet, List } = learned!;
  const parser = new Parser();
  parser.settings = options || {};
  parser._states = ['_parseHeader', '_parseLength', '_parsePayload', '_newPacket'];
  parser.packet = new Packet();
  parser.error = null;
  parser._list = new List();
  parser._stateCounter = 0;
  return parser;
}

/** Learns the classes from a parser mqtt-packet made as it is (null: not the parser this was written for). */
function learn(parser: object): void {
  const state = parser as Partial<ParserState>;
  const Parser = (Object.getPrototypeOf(parser) as { constructor?: unknown } | null)?.constructor as Learned['Parser'] | undefined;
  const List = (state._list?.constructor as { BufferList?: Learned['List'] } | undefined)?.BufferList;
  const Packet = state.packet?.constructor as Learned['Packet'] | undefined;
  const original = mqttPacket.parser;
  const fields = ['settings', '_states', 'packet', 'error', '_list', '_stateCounter'];
  if (typeof Parser !== 'function' || typeof List !== 'function' || typeof Packet !== 'function' || typeof original !== 'function' || !fields.every((key) => key in state)) {
    learned = null;
    return;
  }
  learned = { Parser, Packet, List, original };
}

/**
 * Calls `make(a, b)` (aedes' handle) so that the parser it makes starts on a
 * plain BufferList; `parserOf` finds that parser in what `make` returns, for
 * the first call, which learns the classes (see the header).
 */
export function withPlainParserList<A, B, T>(make: (a: A, b: B) => T, a: A, b: B, parserOf: (made: T) => object): T {
  const known = learned;
  if (known === null) return make(a, b);
  if (known === undefined) {
    const made = make(a, b);
    learn(parserOf(made));
    return made;
  }
  mqttPacket.parser = plainListParser;
  try {
    return make(a, b);
  } finally {
    mqttPacket.parser = known.original;
  }
}
