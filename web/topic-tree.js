// @ts-check
/**
 * The topic tree: every topic seen on `#` and `$SYS/#`, split at `/`, with
 * the last message of each. Bounded: a busy gateway may carry more topics
 * than a page should hold, so past the limits new topics are counted, not kept.
 */
import { previewPayload } from './format.js';

/** Topics (tree entries with a message) kept at most. */
export const MAX_TOPICS = 10_000;
/** Tree entries kept at most, levels without a message of their own included (a topic with many levels costs one per level). */
export const MAX_NODES = 50_000;

/**
 * @typedef {object} LastMessage
 * @property {string} preview  text, or the first bytes in hex
 * @property {boolean} binary
 * @property {number} bytes    payload size
 * @property {number} time     when it arrived (epoch ms)
 * @property {number} qos      QoS as delivered; the page subscribes at 2, so the QoS it was published with
 * @property {boolean} retain  the retain flag as published (Retain As Published, MQTT 5 §3.8.3.1)
 */

/**
 * @typedef {object} TopicNode
 * @property {string} name     this level
 * @property {string} topic    the whole topic up to this level
 * @property {string} search   `topic` in lower case, for the filter
 * @property {Map<string, TopicNode>} children
 * @property {TopicNode[] | undefined} sorted  children by name; dropped when one is added
 * @property {LastMessage | undefined} message
 */

/**
 * @typedef {object} TopicRow
 * @property {TopicNode} node
 * @property {number} level       0 for a first level
 * @property {boolean} expandable
 * @property {boolean} expanded
 */

/** @param {string} name @param {string} topic @returns {TopicNode} */
function createNode(name, topic) {
  return { name, topic, search: topic.toLowerCase(), children: new Map(), sorted: undefined, message: undefined };
}

export class TopicTree {
  root = createNode('', '');
  /** Entries holding a message. */
  topics = 0;
  nodes = 0;
  /** Messages on new topics not kept because a limit was reached. */
  refused = 0;
  /** Bumped on every change, so a view knows when to render again. */
  version = 0;
  /** Levels are shown expanded unless named in `#toggled`; "collapse all" flips the default. */
  #expandedByDefault = true;
  /** The broker's own first levels (`$SYS`): some fifty figures that would bury the application's topics; closed at first. */
  #dollarExpanded = false;
  /** @type {Set<string>} topics whose expansion differs from the default */
  #toggled = new Set();

  /**
   * Records a message. False when its topic is new and a limit is reached.
   * @param {string} topic
   * @param {Uint8Array} payload
   * @param {{ qos: number, retain: boolean }} flags
   * @param {number} time
   */
  record(topic, payload, flags, time) {
    const levels = topic.split('/');
    let node = this.root;
    let depth = 0;
    for (; depth < levels.length; depth++) {
      const next = node.children.get(/** @type {string} */ (levels[depth]));
      if (!next) break;
      node = next;
    }
    const isNewTopic = depth < levels.length || node.message === undefined;
    if (isNewTopic && (this.topics >= MAX_TOPICS || this.nodes + levels.length - depth > MAX_NODES)) {
      this.refused++;
      this.version++;
      return false;
    }
    for (; depth < levels.length; depth++) {
      const name = /** @type {string} */ (levels[depth]);
      const child = createNode(name, levels.slice(0, depth + 1).join('/'));
      node.children.set(name, child);
      node.sorted = undefined;
      this.nodes++;
      node = child;
    }
    if (node.message === undefined) this.topics++;
    const { text, binary } = previewPayload(payload);
    node.message = { preview: text, binary, bytes: payload.length, time, qos: flags.qos, retain: flags.retain };
    this.version++;
    return true;
  }

  /** @param {TopicNode} node */
  isExpanded(node) {
    const dollarRoot = node.topic.startsWith('$') && !node.topic.includes('/');
    return (dollarRoot ? this.#dollarExpanded : this.#expandedByDefault) !== this.#toggled.has(node.topic);
  }

  /** @param {string} topic */
  toggle(topic) {
    if (!this.#toggled.delete(topic)) this.#toggled.add(topic);
    this.version++;
  }

  /** @param {boolean} expanded */
  setAll(expanded) {
    this.#expandedByDefault = expanded;
    this.#dollarExpanded = expanded;
    this.#toggled.clear();
    this.version++;
  }

  /**
   * The rows to show, in order: without a filter every level under an
   * expanded one; with a filter (case-insensitive, anywhere in the topic)
   * the matching topics and the levels above them, expanded or not.
   * @param {string} filter
   * @param {number} limit  rows returned at most
   * @returns {{ rows: TopicRow[], total: number }}  `total` counts the rows beyond `limit` too
   */
  rows(filter, limit) {
    /** @type {TopicRow[]} */
    const rows = [];
    let total = 0;
    const needle = filter.trim().toLowerCase();
    /** @param {TopicRow} row */
    const add = (row) => {
      total++;
      if (rows.length < limit) rows.push(row);
    };
    /** @param {TopicNode} node @param {number} level */
    const walk = (node, level) => {
      for (const child of sortedChildren(node)) {
        const expandable = child.children.size > 0;
        const expanded = expandable && this.isExpanded(child);
        add({ node: child, level, expandable, expanded });
        if (expanded) walk(child, level + 1);
      }
    };
    /**
     * Collects a subtree's matches first, so a level is shown only when it or
     * something under it matches.
     * @param {TopicNode} node @param {number} level @returns {TopicRow[]}
     */
    const match = (node, level) => {
      /** @type {TopicRow[]} */
      const found = [];
      for (const child of sortedChildren(node)) {
        const below = match(child, level + 1);
        if (below.length > 0 || child.search.includes(needle)) {
          found.push({ node: child, level, expandable: child.children.size > 0, expanded: below.length > 0 });
          for (const row of below) found.push(row);
        }
      }
      return found;
    };
    if (needle === '') walk(this.root, 0);
    else for (const row of match(this.root, 0)) add(row);
    return { rows, total };
  }
}

/** @param {TopicNode} node @returns {TopicNode[]} */
function sortedChildren(node) {
  node.sorted ??= [...node.children.values()].sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
  return node.sorted;
}
