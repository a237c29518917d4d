/**
 * An idle connection's parser without its buffers. mqtt-packet's parser
 * (parser.js) keeps, between packets, the Packet it will fill next and the
 * BufferList of bytes not yet parsed: two objects and an array per
 * connection, ~160 bytes, empty whenever no packet is half read, which for
 * an idle client is always. Here each parse starts with fresh ones and, when
 * it leaves the parser between packets (no bytes held, state back at the
 * header, no error), ends by putting back one frozen empty Packet and one
 * frozen empty BufferList shared by all parsers. The parser reads nothing
 * else of them between parses, and aedes reads only `packet.length`
 * (lib/client.js nextBatch: -1, no packet begun). Allocations per parse: one
 * Packet as mqtt-packet makes one per packet anyway, and one BufferList.
 */

/** The parser fields this reads and writes (mqtt-packet parser.js); not in its typings. */
interface Parkable {
  packet: { length: number; constructor: unknown };
  _list: { length: number; constructor: unknown };
  _stateCounter: number;
  error: Error | null;
  parse(buffer: Buffer): number;
}

interface Parked {
  readonly packet: Parkable['packet'];
  readonly list: Parkable['_list'];
  readonly Packet: new () => Parkable['packet'];
  readonly List: new () => Parkable['_list'];
  readonly parse: (this: Parkable, buffer: Buffer) => number;
}

/** Made from the first parser seen: its classes and its prototype's parse. */
let parked: Parked | undefined;

/** Installed as `parser.parse` (one function for all parsers). */
function parseThenPark(this: Parkable, buffer: Buffer): number {
  const shared = parked!;
  if (this.packet === shared.packet) {
    this.packet = new shared.Packet();
    this._list = new shared.List();
  }
  const left = shared.parse.call(this, buffer);
  if (left === 0 && this._stateCounter === 0 && this.packet.length === -1 && this.error === null) {
    this.packet = shared.packet;
    this._list = shared.list;
  }
  return left;
}

/**
 * Makes `parser` park its buffers between packets (see above); false, and
 * nothing changed, if it is not the parser this was written for or holds
 * bytes. Call before it has parsed anything, or between packets.
 */
export function parkParserBuffers(parser: object): boolean {
  const candidate = parser as Partial<Parkable>;
  const packet = candidate.packet;
  const list = candidate._list;
  const parse = (Object.getPrototypeOf(parser) as Partial<Parkable>).parse;
  if (packet === undefined || list === undefined || typeof parse !== 'function' || candidate._stateCounter !== 0) return false;
  if (list.length !== 0 || packet.length !== -1) return false;
  if (parked === undefined) {
    const Packet = packet.constructor as Parked['Packet'];
    const List = list.constructor as Parked['List'];
    parked = { packet: Object.freeze(new Packet()), list: Object.freeze(new List()), Packet, List, parse };
  } else if (packet.constructor !== parked.Packet || list.constructor !== parked.List || parse !== parked.parse) {
    return false;
  }
  const parkable = parser as Parkable;
  parkable.parse = parseThenPark;
  parkable.packet = parked.packet;
  parkable._list = parked.list;
  return true;
}
