/**
 * The client protocols a throughput run measures (one set of table rows
 * each), and whether the aedes that edgemqtt runs on can take MQTT 5
 * clients at all.
 */
import type { ClientProtocol } from './common.js';
import { aedesVersion } from './brokers.js';

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

/**
 * Why edgemqtt (and every variant, all on aedes) cannot take MQTT 5 clients,
 * or undefined when it can: aedes 1.x speaks MQTT 3.1.1 only, 2.x adds MQTT 5.
 */
export function mqtt5Gap(): string | undefined {
  const version = aedesVersion();
  const major = Number(version.split('.')[0]);
  return major >= 2 ? undefined : `n/a (aedes ${Number.isFinite(major) ? major : '?'}.x has no MQTT 5)`;
}
