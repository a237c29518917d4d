// @ts-check
/**
 * Store and bridge health, from the JSON the daemon publishes retained on
 * $SYS/edgemqtt/store and $SYS/edgemqtt/bridge.
 */
import { element, formatBytes, formatCount, formatDuration } from './format.js';

/**
 * @typedef {[label: string, value: string, warn?: boolean]} Entry
 */

/**
 * Fills a <dl> with label/value pairs.
 * @param {HTMLDListElement} list
 * @param {Entry[]} entries
 */
function fill(list, entries) {
  const nodes = [];
  for (const [label, value, warn] of entries) {
    nodes.push(element('dt', {}, label), element('dd', warn ? { class: 'warn' } : {}, value));
  }
  list.replaceChildren(...nodes);
}

/**
 * @param {string} text
 * @returns {Record<string, unknown> | undefined}
 */
function parseObject(text) {
  try {
    const value = JSON.parse(text);
    return value !== null && typeof value === 'object' && !Array.isArray(value) ? value : undefined;
  } catch {
    return undefined;
  }
}

/** @param {unknown} value */
const count = (value) => (typeof value === 'number' ? formatCount(value) : '–');

/**
 * $SYS/edgemqtt/store: {"sessions","queuedMessages","retainedMessages","sizeBytes","writesFailing"}.
 * @param {HTMLDListElement} list
 * @param {string} text
 */
export function showStore(list, text) {
  const store = parseObject(text);
  if (!store) {
    fill(list, [['Status', `unreadable: ${text.slice(0, 80)}`, true]]);
    return;
  }
  const failing = store.writesFailing === true;
  fill(list, [
    ['Writes', failing ? 'FAILING: QoS 1/2 publishes are not acknowledged' : 'ok', failing],
    ['Sessions', count(store.sessions)],
    ['Queued messages', count(store.queuedMessages)],
    ['Retained messages', count(store.retainedMessages)],
    ['Size on disk', typeof store.sizeBytes === 'number' ? formatBytes(store.sizeBytes) : '–'],
  ]);
}

/**
 * $SYS/edgemqtt/bridge: {"state","problem","outboxDepth","oldestAgeMs","exported","imported","resent","duplicates"}.
 * @param {HTMLDListElement} list
 * @param {string} text
 */
export function showBridge(list, text) {
  const bridge = parseObject(text);
  if (!bridge) {
    fill(list, [['State', `unreadable: ${text.slice(0, 80)}`, true]]);
    return;
  }
  const state = typeof bridge.state === 'string' ? bridge.state : '–';
  /** @type {Entry[]} */
  const entries = [['State', state, state !== 'connected' && state !== 'disabled']];
  if (typeof bridge.problem === 'string' && bridge.problem !== '') entries.push(['Problem', bridge.problem, true]);
  entries.push(
    ['Outbox', `${count(bridge.outboxDepth)} messages`],
    ['Oldest waiting', typeof bridge.oldestAgeMs === 'number' && bridge.oldestAgeMs > 0 ? formatDuration(bridge.oldestAgeMs / 1000) : '–'],
    ['Exported', count(bridge.exported)],
    ['Imported', count(bridge.imported)],
    ['Resent', count(bridge.resent)],
    ['Duplicates', count(bridge.duplicates)],
  );
  fill(list, entries);
}

/**
 * Until the first figures arrive.
 * @param {HTMLDListElement} list
 * @param {string} topic
 */
export function showWaiting(list, topic) {
  fill(list, [['Status', `waiting for ${topic}`]]);
}
