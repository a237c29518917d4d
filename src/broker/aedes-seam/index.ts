/**
 * The one place that reaches past aedes' public typings (this folder). Everything else in
 * the broker (and the authorizer, through the broker) uses the surface here;
 * each touch names the aedes file and function it relies on, so that an
 * upgrade is one module to read. aedes is pinned (AEDES_VERSION) and the
 * broker refuses to start on another version (checkAedesVersion).
 *
 * What is hooked, and why:
 * - `aedes.handle` (aedes.js constructor): the limits, the protocol guard and
 *   the write coalescer see each connection before aedes makes its Client,
 *   the delivery hooks see the Client right after (onConnection).
 * - `conn.read` (lib/client.js: aedes pulls bytes with read() on 'readable'
 *   and never uses 'data'): the protocol guard's filter (interceptReads);
 *   and connect-hold.ts, which stands in for read() itself until aedes has
 *   accepted the CONNECT (connackAccepted: `connackSent`, `closed`), relying
 *   on the same rule.
 * - Client `deliver0`/`deliverQoS` (lib/client.js; subscription handlers
 *   capture them at SUBSCRIBE time, handlers/subscribe.js), `duplicates`
 *   (lib/client.js dedupe; one map reading 0 shared by all clients),
 *   `subscriptions` (replaced by a map that counts aedes' assignments and
 *   deletes, subscriptionChanges), `_handleDrainTimeout`
 *   (lib/client.js waitForDrain), `_will` and `will` (handlers/connect.js,
 *   lib/client.js close).
 * - Shared subscriptions (shared.ts): the client's parser (one 'packet'
 *   listener ahead of aedes', finding the client as `parser.client` and the
 *   broker's listener on the aedes instance) to rename `$share/` filters and
 *   see acknowledgements, the CONNACK bytes (Shared Subscription
 *   Available), `aedes.persistence.outgoingEnqueueCombi` to queue a group's
 *   copy with the publish, and the innermost deliverQoS to learn the packet
 *   identifier a copy went out under.
 * - mqtt-packet's `writeToStream`, as aedes' lib/write.js calls it
 *   (packet-writes.ts): the broker's Topic Aliases for what it sends
 *   (outgoing-aliases.ts), the count of PUBLISH packets written, and a
 *   PUBLISH or PUBACK in its usual shape written as one buffer made in
 *   packet-encoding.ts (the bytes mqtt-packet writes, without its chunks,
 *   cork and debug calls).
 * - `aedes.registerClient` (aedes.js) to see a takeover before aedes closes
 *   the old client, and the client parser's 'error' (lib/client.js) to see
 *   a parse error before aedes closes it (departures.ts).
 * - `aedes.authorizePublish` and `aedes.publish`: the publish path below;
 *   `publish` also strips a will's Will Delay Interval (aedes #1098).
 * - `aedes.scheduleSessionExpiry`, `scheduleWill`, `authenticate` and
 *   Client `clean` (aedes.js, lib/client.js close,
 *   handlers/connect.js): session expiry and delayed wills with the store
 *   as the authority, and Clean Start 0 resuming the stored session
 *   whatever its new Session Expiry (sessions.ts).
 * - `conn.read` again, above the guard and under the connect hold, and
 *   `aedes.mq._matcher` (mqemitter's qlobber: `add`, `remove`, `match`): the QoS 0
 *   fast path (fast-publish.ts, which lists what else of aedes it reads),
 *   which also remembers the matcher's answers per topic for mqemitter's
 *   own emits until a subscription changes (counted in `add` and `remove`:
 *   mqemitter's removeListener removes a handler in a later setImmediate;
 *   canary in test/aedes-canaries.test.ts).
 * - Per Client, to make it lighter (lightenClient, client.ts; canaries in
 *   test/aedes-canaries-client.test.ts): `_eos` (end-of-stream's cleanup,
 *   lib/client.js constructor) replaced by one shared 'close' listener,
 *   aedes' bound 'end'/'error' listeners on the connection and the parser
 *   by shared functions that find the client through `conn.client` and
 *   `parser.client`, and the parser's `_list` (mqtt-packet, a bl
 *   BufferListStream) by a plain BufferList (made so from the start: while
 *   aedes' `handle` runs, mqtt-packet's exported `parser`, which lib/client.js
 *   calls, is one that makes it so, parser-list.ts), the parser's `_states` by one
 *   shared list, the parser's and (once 'connected') the client's `_events`
 *   (Node's EventEmitter tables) by fast-mode prototype-free copies; the
 *   parser's `parse`, so that between packets its `packet` and `_list` are
 *   shared frozen empty ones (parser-parking.ts); once 'connected', the
 *   parser's `settings` (the CONNECT itself, parser.js _parseConnect) by a
 *   shared object of the two keys it reads, a 3.1.1 client's
 *   `_topicAliases` by one shared table that takes none, and its
 *   `_keepaliveTimer` (handlers/connect.js setKeepAlive) by a Beat that the
 *   broker's once-a-second sweep over `aedes.clients` checks (keepalive.ts);
 *   `_handleDrainTimeout` is one shared function that runs the aedes
 *   instance's onDrainTimeout listeners first. What the seam keeps per client or connection is in
 *   symbol-keyed fields of the Client or the connection, not in WeakMaps;
 *   what is the same for all clients (the traffic tap, the parse-error and
 *   acknowledgement listeners) on the aedes instance, found through
 *   `client.broker` and `conn.client` (lib/client.js constructor).
 * - `aedes.mq._do` (mqemitter 7.1.0): its queue drained without unbounded
 *   recursion (emitter-depth.ts).
 * - Client `deliverQoS` again, as the lowest layer of each client's
 *   deliveries: a QoS 1 delivery is written in the call, with aedes' own
 *   lib/qos-packet.js (loaded by path, aedes-lib.ts) and lib/write.js's
 *   steps (aedes-write.ts), instead
 *   of in a setImmediate after a promise (direct-deliveries.ts; canary in
 *   test/aedes-canaries.test.ts); and Client `duplicates`, read to know that
 *   the delivery rules turned aedes' dedupe off.
 * - `aedes.persistence.outgoingStream` as handlers/connect.js emptyQueue
 *   calls it, and aedes' lib/write.js and lib/qos-packet.js: the resend of
 *   a persistent session's stored messages after CONNECT, done with aedes'
 *   own steps but many messages per event-loop turn instead of one, a
 *   stored PUBLISH in its usual shape written as one frame, with Client
 *   `version`, `errored` and `waitForDrain` as lib/write.js reads them
 *   (resend.ts).
 * - The client parser's 'packet' listener (lib/client.js `enqueue`) until
 *   the first packet, and handlers/connect.js's steps with aedes'
 *   lib/write.js, lib/qos-packet.js, handlers/subscribe.js and
 *   constants.js: a 3.1/3.1.1 CONNECT aedes would accept is run through the
 *   same broker hooks in the same order without the stream pipeline aedes
 *   builds per CONNECT to resend the stored queue, which is read only when
 *   the persistence may hold one (connect.ts, the fields and files it
 *   touches typed in connect-internals.ts; canaries in
 *   test/aedes-canaries-connect.test.ts).
 * - The parser's 'packet' event and Client `_parsingBatch`, `_nextBatch`,
 *   `_wireVersion` (lib/client.js enqueue, handlers/index.js handle): a
 *   QoS 1 PUBLISH of a 3.1/3.1.1 client read in place goes through
 *   handlePublish's and enqueuePublish's steps in their order without
 *   aedes' handler chain (wire-qos1.ts), a PUBACK or PUBCOMP through
 *   handlePuback's (wire-acks.ts, with `broker.maximumPacketSize` and the
 *   broker's 'ack' event), and the seam's own writes follow lib/write.js's
 *   steps with their callbacks from one setImmediate per turn
 *   (aedes-write.ts; canaries in test/aedes-canaries-client.test.ts).
 * - `aedes.clients` (aedes.js registerClient), `aedes.counter` (aedes.js, read
 *   by aedes-packet for each new message), `aedes.persistence` (set by
 *   listen()).
 *
 * The publish path. aedes (1.2.0 and 2.0.0-beta.1 alike) answers a QoS 1
 * PUBLISH in this order (lib/handlers/publish.js, enqueuePublish): authorizePublish → write PUBACK
 * → broker.publish(packet), and only that publish stores the retained
 * message and queues the copies for offline persistent sessions. A crash
 * between the PUBACK and the end of the publish would lose a message the
 * publisher was told is safe (DESIGN.md, the data path, step 2). So the
 * publish runs inside authorizePublish instead, and aedes' own call after
 * the PUBACK is answered at once. A QoS 1 PUBLISH, from socket to PUBACK:
 *
 *  1. aedes reads the bytes (conn.read, through the protocol guard's filter)
 *     and parses the packet (lib/client.js → lib/handlers/publish.js).
 *  2. aedes calls broker.authorizePublish: `authorizePublish` below asks the
 *     access policy, which answers synchronously: allow, drop or refuse.
 *  3. Allowed: aedes' publish steps run, once (qos-publish.ts):
 *     storeRetained; enqueueOffline, whose outgoingEnqueueCombi the
 *     persistence resolves only once the batch holding this PUBLISH's
 *     records is written per `persistence.sync`; emitPacket, which calls each
 *     matching subscriber's deliverQoS (delivery-rules.ts, then
 *     client-flow.ts, then shared subscriptions' watch, then aedes': the
 *     layers of wrapDeliveries) while those records are being written, not
 *     after; callPublished, once both are done.
 *  4. Its callback marks the packet as published and lets aedes go on: aedes
 *     writes the PUBACK (lib/write.js).
 *  5. aedes calls broker.publish(packet): `publish` below finds the mark and
 *     calls back without publishing again.
 * A 3.1/3.1.1 QoS 1 PUBLISH read in place by the fast path takes steps 2–5
 * in the same order without aedes' handlers in between (wire-qos1.ts).
 * A publish that fails (a store write failed) is reported to aedes as an
 * authorization error: aedes closes the connection without a PUBACK, and the
 * client resends the message on its next connection.
 *
 * QoS 0 and QoS 2 keep aedes' order (QoS 2 is durable already: the PUBREC
 * follows the publish, and the persistence makes that publish's records
 * durable together): step 2 allows, step 5 publishes. A dropped PUBLISH (the
 * ACL denies it: MQTT 3.1.1 has no negative acknowledgement, so it is
 * acknowledged and dropped, the connection kept) is marked at step 2 and
 * never published. Wills have no packet identifier: aedes calls
 * authorizePublish and then publish for them (lib/client.js close, aedes.js
 * _clearWills); a dropped will is not published, but aedes still deletes it
 * from the store, as for one published.
 */
export * from './version.js';
export * from './client.js';
export { AedesSeam } from './seam.js';
export { FastPublish, type FastPublishOptions } from './fast-publish.js';
export { variableByteIntegerBytes } from './publish-frames.js';
export { installIncomingCleanup } from './incoming-cleanup.js';
export { installBatchResend, RESEND_BATCH } from './resend.js';
export { installConnectPath, type QueuedCheck } from './connect.js';
export { installDirectDeliveries } from './direct-deliveries.js';
export * from './mqtt5.js';
export * from './shared.js';
export { assignOutgoingTopicAliases } from './outgoing-aliases.js';
export { installSessionAuthority, type SessionAuthority } from './sessions.js';
export { onPublishWritten, type PublishTap } from './packet-writes.js';
export { installSubscribeOutcomes, refuseFilter, SUBACK_QUOTA_EXCEEDED, SUBACK_TOPIC_FILTER_INVALID } from './subscribe-outcomes.js';
export { onParseError, onTakeover } from './departures.js';
