/**
 * Clients that must not notice what other connections do: one per transport,
 * never disconnected, and still publishing to itself and receiving afterwards.
 */
import type { Test } from 'tap';
import type { RunningDaemon } from './daemon.js';
import { openClient, type OpenedClient } from './mqtt.js';

export const transports = ['tcp', 'ws'] as const;
export type Transport = (typeof transports)[number];

export const urlOf = (daemon: RunningDaemon, transport: Transport): string =>
  transport === 'tcp' ? daemon.mqttUrl : daemon.wsUrl;

/** Connects the bystanders; the returned check asserts they were unaffected. */
export async function bystanders(t: Test, daemon: RunningDaemon): Promise<() => Promise<void>> {
  const clients: { transport: Transport; opened: OpenedClient; closes: number }[] = [];
  for (const transport of transports) {
    const opened = await openClient(t, urlOf(daemon, transport), { clientId: `bystander-${transport}` });
    await opened.client.subscribeAsync(`bystander/${transport}`, { qos: 1 });
    const entry = { transport, opened, closes: 0 };
    opened.client.on('close', () => entry.closes++);
    clients.push(entry);
  }
  return async () => {
    for (const { transport, opened, closes } of clients) {
      t.equal(closes, 0, `the ${transport} bystander was never disconnected`);
      await opened.client.publishAsync(`bystander/${transport}`, 'still here', { qos: 1 });
      await opened.log.waitFor((m) => m.some((x) => x.payload === 'still here'), 5000, `the ${transport} bystander's message`);
      t.pass(`the ${transport} bystander still publishes and receives`);
    }
  };
}
