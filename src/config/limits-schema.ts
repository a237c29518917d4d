/**
 * The `limits:` section of the config schema (see schema.ts), applied by
 * src/broker/limits.ts, flow-control.ts and protocol-guard/: what one client,
 * or one source address, may cost the others. Each hit is counted and logged
 * (at most one line per limit per 10 s).
 */
import { z } from 'zod';
import { parseAddressRange } from '../util/address-list.js';

/** aedes and qlobber cannot match topics of more levels than this. */
export const MAX_TOPIC_LEVELS = 100;

/** One entry of an address list: an IPv4 or IPv6 address or CIDR range, refused with its reason. */
const addressRange = z.string().superRefine((entry, ctx) => {
  const range = parseAddressRange(entry);
  if (typeof range === 'string') ctx.addIssue({ code: 'custom', message: `not an IP address or CIDR range: ${range}` });
});

export const limitsSchema = z
  .strictObject({
    maxConnections: z
      .number()
      .int()
      .min(0)
      .default(0)
      .describe('MQTT connections open at once over all listeners (TCP, TLS, WebSocket); further ones are closed at once; 0 = unlimited'),
    connectRatePerAddressPerSec: z
      .number()
      .min(0)
      .default(20)
      .describe('New connections per second one source address may open, sustained; beyond it they are closed at once; 0 = unlimited'),
    connectBurstPerAddress: z
      .number()
      .int()
      .min(1)
      .default(100)
      .describe('New connections one source address may open in a burst before connectRatePerAddressPerSec applies'),
    connectRateExemptLoopback: z
      .boolean()
      .default(true)
      .describe(
        'Connections from loopback (127.0.0.0/8, ::1, also IPv4-mapped) are not held to connectRatePerAddressPerSec: ' +
          'a local reverse proxy or WebSocket gateway carries many clients on one address',
      ),
    connectRateExemptAddresses: z
      .array(addressRange)
      .default([])
      .describe(
        'Source addresses or CIDR ranges (IPv4 or IPv6, e.g. 10.0.0.5, 10.1.0.0/16, fd00::/8) not held to ' +
          'connectRatePerAddressPerSec: reverse proxies and NAT gateways that carry many clients; limits.maxConnections still applies',
      ),
    maxTopicLengthBytes: z
      .number()
      .int()
      .min(0)
      .max(65535)
      .default(1024)
      .describe('Longest topic name or filter in UTF-8 bytes; a PUBLISH or will over it closes the connection, a SUBSCRIBE filter over it is refused (0x80); 0 = the protocol maximum, 65535'),
    maxTopicLevels: z
      .number()
      .int()
      .min(1)
      .max(MAX_TOPIC_LEVELS)
      .default(MAX_TOPIC_LEVELS)
      .describe(`Most levels in a topic name or filter; treated like maxTopicLengthBytes; at most ${MAX_TOPIC_LEVELS}`),
    maxSubscriptionsPerClient: z
      .number()
      .int()
      .min(0)
      .default(1000)
      .describe('Topic filters one client may hold; a SUBSCRIBE beyond it is refused for that filter (0x80); 0 = unlimited'),
    maxInflightMessages: z
      .number()
      .int()
      .min(0)
      .default(20)
      .describe(
        'QoS 1/2 messages sent to one client and not yet acknowledged; further ones wait in its queue; an MQTT 5 ' +
          "client's Receive Maximum lowers it for that client; 0 = unlimited",
      ),
    maxIncomingAwaitingRelease: z
      .number()
      .int()
      .min(0)
      .max(65535)
      .default(1000)
      .describe(
        'Incoming QoS 2 messages one connection may leave awaiting PUBREL; one more closes it (MQTT 5: DISCONNECT ' +
          '0x93), and MQTT 5 clients are told it as Receive Maximum; 0 = unlimited',
      ),
    maxOutgoingBufferBytes: z
      .number()
      .int()
      .min(0)
      .default(1_048_576)
      .describe(
        'Bytes waiting to be sent to one client; beyond it QoS 0 messages for it are dropped and QoS 1/2 wait in its ' +
          'queue (up to persistence.maxQueuedMessagesPerClient and maxQueuedBytesPerClient); 0 = unlimited',
      ),
  })
  .prefault({});
