/**
 * The MQTT 3.1.1 rules for CONNECT, SUBSCRIBE and UNSUBSCRIBE, judged on the
 * collected body of one packet (guard.ts does the framing and PUBLISH).
 */
import { CLAUSES_3_1_1 } from './clauses.js';
import { readConnectFlags } from './connect-flags.js';
import type { FieldReader } from './field-reader.js';
import { topicFilterProblem, utf8StringProblem } from './strings.js';
import { malformedAs, protocol, within, type TopicChecks, type Violation } from './verdict.js';

/** Reasons a packet's bytes do not add up; [MQTT-4.8.0-1] says close. */
const malformed = (reason: string): Violation => malformedAs(CLAUSES_3_1_1.malformed, `malformed packet: ${reason}`);

/** The rest of a level 3 or 4 CONNECT, from its Connect Flags on (3.1.2.3 onwards). */
export function checkConnect311(reader: FieldReader, topics: TopicChecks): Violation | null {
  const flags = readConnectFlags(reader);
  if (flags === null) return malformed('CONNECT too short for its flags and keep-alive');
  const { will, willQoS, willRetain, password, username } = flags;
  if (flags.reserved) return protocol('MQTT-3.1.2-3', 'CONNECT reserved flag set');
  if (!will && willQoS !== 0) return protocol('MQTT-3.1.2-13', 'Will QoS set without the Will Flag');
  if (!will && willRetain) return protocol('MQTT-3.1.2-15', 'Will Retain set without the Will Flag');
  if (will && willQoS === 3) return protocol('MQTT-3.1.2-14', 'Will QoS 3');
  if (password && !username) return protocol('MQTT-3.1.2-22', 'a password without a user name');

  const clientId = reader.string();
  if (clientId === null) return malformed('CONNECT too short for its client identifier');
  const idProblem = utf8StringProblem(clientId);
  if (idProblem) return within('client identifier', idProblem);
  if (will) {
    const topic = reader.string();
    if (topic === null || reader.string() === null) return malformed('CONNECT too short for its will');
    const limitProblem = topics.topicLength(topic.length);
    if (limitProblem) return limitProblem;
    const topicProblem = topics.topicName(topic);
    if (topicProblem) return within('will topic', topicProblem);
  }
  if (username) {
    const user = reader.string();
    if (user === null) return malformed('CONNECT too short for its user name');
    const userProblem = utf8StringProblem(user);
    if (userProblem) return within('user name', userProblem);
  }
  if (password && reader.string() === null) return malformed('CONNECT too short for its password');
  if (!reader.done) return malformed(`${reader.left} unexpected bytes at the end of CONNECT`);
  return null;
}

/** SUBSCRIBE [MQTT-3.8.3-1] [MQTT-3.8.3-3] [MQTT-3-8.3-4] and UNSUBSCRIBE [MQTT-3.10.3-1] [MQTT-3.10.3-2]. */
export function checkSubscriptions311(reader: FieldReader, subscribe: boolean): Violation | null {
  const name = subscribe ? 'SUBSCRIBE' : 'UNSUBSCRIBE';
  const packetId = reader.uint16();
  if (packetId === null) return malformed(`${name} too short for its packet identifier`);
  if (packetId === 0) return protocol('MQTT-2.3.1-1', `${name} with packet identifier 0`);
  if (reader.done) {
    return subscribe
      ? protocol('MQTT-3.8.3-3', 'SUBSCRIBE without a topic filter')
      : protocol('MQTT-3.10.3-2', 'UNSUBSCRIBE without a topic filter');
  }
  while (!reader.done) {
    const filter = reader.string();
    if (filter === null) return malformed(`${name} topic filter runs past the packet`);
    const problem = topicFilterProblem(filter);
    if (problem) return within('topic filter', problem);
    if (subscribe) {
      const options = reader.byte();
      if (options === null) return malformed('SUBSCRIBE topic filter without its requested QoS');
      if (options > 2) return protocol('MQTT-3-8.3-4', `SUBSCRIBE requested QoS byte ${options}`);
    }
  }
  return null;
}
