/**
 * Lists of IP addresses and CIDR ranges from the config (e.g.
 * limits.connectRateExemptAddresses): checked one entry at a time by the
 * schema, so a bad entry is named with its reason, and matched with Node's
 * net.BlockList, which also matches an IPv4-mapped IPv6 address
 * (`::ffff:10.0.0.7`, what a dual-stack listener reports for an IPv4 client)
 * against IPv4 entries.
 */
import { BlockList, isIP } from 'node:net';

export interface AddressRange {
  family: 'ipv4' | 'ipv6';
  address: string;
  prefix: number;
}

/** An address (`10.0.0.7`, `fd00::1`) or a CIDR range (`10.0.0.0/8`, `fd00::/8`), or why it is neither. */
export function parseAddressRange(entry: string): AddressRange | string {
  const slash = entry.indexOf('/');
  const address = slash === -1 ? entry : entry.slice(0, slash);
  const version = isIP(address);
  if (version === 0) return `"${address}" is not an IPv4 or IPv6 address`;
  const family = version === 4 ? 'ipv4' : 'ipv6';
  const max = version === 4 ? 32 : 128;
  if (slash === -1) return { family, address, prefix: max };
  const prefixText = entry.slice(slash + 1);
  const prefix = Number(prefixText);
  if (!/^\d{1,3}$/.test(prefixText) || prefix > max) return `prefix length "/${prefixText}" must be a whole number from 0 to ${max} for ${family === 'ipv4' ? 'IPv4' : 'IPv6'}`;
  return { family, address, prefix };
}

/** Loopback: 127.0.0.0/8 and ::1 (the IPv4-mapped form ::ffff:127.x matches the first). */
export const LOOPBACK_RANGES: readonly string[] = ['127.0.0.0/8', '::1/128'];

export interface AddressMatcher {
  /** Whether `address` (as a socket's remoteAddress reports it) lies in one of the ranges. */
  has(address: string | undefined): boolean;
}

/** A matcher for `entries`; they must have passed parseAddressRange (the schema checks them). */
export function createAddressMatcher(entries: readonly string[]): AddressMatcher {
  if (entries.length === 0) return { has: () => false };
  const list = new BlockList();
  for (const entry of entries) {
    const range = parseAddressRange(entry);
    if (typeof range === 'string') throw new Error(`address list entry "${entry}": ${range}`);
    list.addSubnet(range.address, range.prefix, range.family);
  }
  // Asked once per connection, mostly for the same few addresses (a proxy's,
  // loopback): BlockList.check builds a SocketAddress each time, a few µs
  // that a reconnect storm pays thousands of times. The answers are kept,
  // up to ANSWERS_KEPT addresses, then forgotten all at once (many clients
  // from many addresses stay bounded; the list itself never changes).
  const answers = new Map<string, boolean>();
  return {
    has(address) {
      if (address === undefined) return false;
      const known = answers.get(address);
      if (known !== undefined) return known;
      const version = isIP(address);
      const answer = version !== 0 && list.check(address, version === 4 ? 'ipv4' : 'ipv6');
      if (answers.size >= ANSWERS_KEPT) answers.clear();
      answers.set(address, answer);
      return answer;
    },
  };
}

/** Addresses whose answer a matcher remembers (see createAddressMatcher). */
const ANSWERS_KEPT = 4096;
