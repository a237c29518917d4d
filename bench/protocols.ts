/**
 * The client protocols a throughput run measures (one set of table rows
 * each).
 */
import type { ClientProtocol } from './common.js';

/** A client protocol as named on the command line and in the table's MQTT column. */
export interface Protocol {
  name: '3.1.1' | '5';
  level: ClientProtocol['level'];
}

export const PROTOCOLS: Protocol[] = [
  { name: '3.1.1', level: 4 },
  { name: '5', level: 5 },
];

/** `3.1.1,5` (or `5.0`) → the protocols, in that order, without repeats. */
export function parseProtocols(list: string): Protocol[] {
  const names = list.split(',').map((name) => name.trim()).filter(Boolean);
  const chosen = names.map((name) => {
    const protocol = PROTOCOLS.find((candidate) => candidate.name === name || (name === '5.0' && candidate.level === 5));
    if (!protocol) throw new Error(`unknown protocol ${name}; known: ${PROTOCOLS.map((p) => p.name).join(', ')}`);
    return protocol;
  });
  if (chosen.length === 0) throw new Error('no protocol chosen');
  return [...new Set(chosen)];
}

/** What the load generator's clients send for a table row (scenarios may add PUBLISH properties). */
export const clientProtocol = (protocol: Protocol): ClientProtocol => ({ level: protocol.level, properties: false });
