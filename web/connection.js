// @ts-check
/**
 * The page's MQTT 5 connection over WebSocket (mqtt.js's own browser build,
 * served by the daemon): it logs in like any client, subscribes to `$SYS/#`,
 * and to what the topic tree watches (`#` by default) while it watches.
 */
import mqtt from './mqtt.esm.js';

/**
 * What the page subscribes to as soon as it connects: the broker's figures
 * for the charts and health panels, a few messages every broker.sysIntervalSec.
 * @type {Record<string, { qos: 0 | 1 | 2, rap: boolean }>}
 */
const SUBSCRIPTIONS = {
  '$SYS/#': { qos: 0, rap: true },
};

/**
 * How the topic tree watches a filter, only when asked (`watch`): it makes
 * the page one more subscriber to every matching message, which on a busy
 * gateway costs as much as any subscriber. Retain As Published (MQTT 5
 * §3.8.3.1) keeps the publisher's retain flag on live messages, so the tree
 * shows which topics really hold a retained message; QoS 2 so a message
 * arrives with the QoS it was published with (delivery is at the lower of
 * the two, §3.8.4).
 */
const WATCH = /** @type {const} */ ({ qos: 2, rap: true });

/** After a lost connection, the next try. */
const RECONNECT_MS = 3000;

/**
 * @typedef {'connecting' | 'connected' | 'reconnecting' | 'refused'} ConnectionState
 * `refused`: the broker turned the login down (CONNACK with a reason code); no retry.
 */

/**
 * @typedef {object} ConnectionOptions
 * @property {string} url        ws(s)://host:port/path
 * @property {string} clientId
 * @property {string} username   empty for an anonymous login
 * @property {string} password
 * @property {(topic: string, payload: Uint8Array, flags: { qos: number, retain: boolean }) => void} onMessage
 * @property {(state: ConnectionState, detail: string) => void} onState
 * @property {(filter: string, why: string) => void} onSubscriptionRefused
 * @property {(filter: string | null) => void} onWatching  the filter the tree now watches (null: none)
 */

/**
 * Connects, reconnecting after a lost connection until `close()`.
 * @param {ConnectionOptions} options
 * @returns {{ close(): void, watch(filter: string): void, unwatch(): void }}
 */
export function openConnection(options) {
  const client = mqtt.connect(options.url, {
    protocolVersion: 5,
    clientId: options.clientId,
    clean: true,
    // The session ends with the connection: the page keeps nothing queued on the gateway.
    properties: { sessionExpiryInterval: 0 },
    ...(options.username !== '' || options.password !== '' ? { username: options.username, password: options.password } : {}),
    reconnectPeriod: RECONNECT_MS,
    connectTimeout: 10_000,
    // Subscribed afresh on every connect below, where a refusal can be reported.
    resubscribe: false,
  });
  let closed = false;
  let refused = false;
  /** The filter the topic tree asked to watch, subscribed again after a reconnect. @type {string | null} */
  let watched = null;

  /** @param {string} filter */
  const subscribeWatched = (filter) => {
    client.subscribe({ [filter]: WATCH }, (error) => {
      if (closed || watched !== filter) return;
      const code = refusalCode(error);
      if (code !== undefined) {
        watched = null;
        options.onSubscriptionRefused(filter, reasonText(code));
        options.onWatching(null);
      } else if (!error) options.onWatching(filter);
    });
  };

  options.onState('connecting', '');
  client.on('connect', () => {
    // One SUBSCRIBE per filter: a refused `$SYS/#` (anonymous clients may
    // not read it) must not cost the topic tree its `#`.
    let pending = Object.keys(SUBSCRIPTIONS).length;
    for (const [filter, subscription] of Object.entries(SUBSCRIPTIONS)) {
      client.subscribe({ [filter]: subscription }, (error) => {
        if (closed) return;
        if (error) {
          const code = refusalCode(error);
          if (code === undefined) return;
          options.onSubscriptionRefused(filter, reasonText(code));
        }
        if (--pending === 0) options.onState('connected', '');
      });
    }
    if (watched !== null) subscribeWatched(watched);
  });
  client.on('message', (topic, payload, packet) => {
    if (!closed) options.onMessage(topic, payload, { qos: packet.qos, retain: packet.retain });
  });
  client.on('error', (error) => {
    if (closed) return;
    const code = /** @type {{ code?: unknown }} */ (error).code;
    // A CONNACK refusal: mqtt.js does not retry it, and the same login would be refused again.
    if (typeof code === 'number') {
      refused = true;
      options.onState('refused', error.message);
    }
  });
  client.on('reconnect', () => {
    if (!closed && !refused) options.onState('reconnecting', 'connection lost; trying again');
  });
  client.on('close', () => {
    if (!closed && !refused) options.onState('reconnecting', `connection closed; trying again in ${RECONNECT_MS / 1000} s`);
  });

  return {
    close() {
      closed = true;
      client.end(true);
    },
    watch(filter) {
      if (watched !== null && watched !== filter) client.unsubscribe(watched);
      watched = filter;
      if (client.connected) subscribeWatched(filter);
    },
    unwatch() {
      if (watched === null) return;
      const filter = watched;
      watched = null;
      // Off once the broker has answered: nothing for the filter arrives after that [MQTT-3.10.4-2].
      client.unsubscribe(filter, () => {
        if (!closed && watched === null) options.onWatching(null);
      });
    },
  };
}

/**
 * The reason code of a refused SUBSCRIBE: 0x80 or more in the SUBACK refuses
 * the filter (MQTT 5 §3.9.3), and mqtt.js then hands the SUBACK over with the
 * error. An error without one is a lost connection, reported by 'close'.
 * @param {Error | null | undefined} error
 * @returns {number | undefined}
 */
function refusalCode(error) {
  const code = /** @type {{ packet?: { granted?: unknown[] } } | null | undefined} */ (error)?.packet?.granted?.[0];
  return typeof code === 'number' ? code : undefined;
}

/** @param {number} code */
function reasonText(code) {
  switch (code) {
    case 0x80:
      return 'refused (unspecified error)';
    case 0x87:
      return 'not authorized';
    case 0x8f:
      return 'topic filter invalid';
    default:
      return `refused (reason code 0x${code.toString(16)})`;
  }
}
