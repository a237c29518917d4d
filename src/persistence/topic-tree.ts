/**
 * The in-memory index of retained messages: a tree with one node per topic
 * level, each topic holding a value (the persistence keeps the encoded
 * retained record there). Matching a filter walks only the branches the
 * filter can match, so `room/+/temp` visits the `room` subtree's second level
 * and nothing else, no matter how many other retained topics exist (a full
 * scan is what the classic aedes persistences do).
 *
 * Matching follows MQTT 3.1.1 §4.7: `+` matches one level (an empty one too),
 * `#` matches the level it stands for and everything below, including the
 * parent (`a/#` matches `a`) [MQTT-4.7.1-2], and a filter starting with a
 * wildcard does not match topics starting with `$` [MQTT-4.7.2-1].
 */

interface TopicNode<V> {
  children: Map<string, TopicNode<V>> | undefined;
  /** The full topic when a retained message exists at exactly this node. */
  topic: string | undefined;
  value: V | undefined;
}

const SEPARATOR = '/';
const WILDCARD_ONE = '+';
const WILDCARD_SOME = '#';

export class TopicTree<V> {
  readonly #root: TopicNode<V> = { children: undefined, topic: undefined, value: undefined };
  #size = 0;
  #visited = 0;

  /** Topics held. */
  get size(): number {
    return this.#size;
  }

  /** Nodes visited by match() so far: lets tests and metrics prove matches do not scan. */
  get nodesVisited(): number {
    return this.#visited;
  }

  /** Sets the value of `topic`; false when the topic was already present (its value is replaced). */
  add(topic: string, value: V): boolean {
    const size = this.#size;
    this.replace(topic, value);
    return this.#size > size;
  }

  /** Sets the value of `topic` and returns the one it replaces (undefined when new): one walk, not a get() and an add(). */
  replace(topic: string, value: V): V | undefined {
    let node = this.#root;
    for (const level of topic.split(SEPARATOR)) {
      node.children ??= new Map();
      let child = node.children.get(level);
      if (!child) {
        child = { children: undefined, topic: undefined, value: undefined };
        node.children.set(level, child);
      }
      node = child;
    }
    const previous = node.value;
    node.value = value;
    if (node.topic !== undefined) return previous;
    node.topic = topic;
    this.#size++;
    return undefined;
  }

  /** Removes `topic` and prunes branches left empty; false when it was absent. */
  delete(topic: string): boolean {
    const path: Array<[TopicNode<V>, string]> = [];
    let node = this.#root;
    for (const level of topic.split(SEPARATOR)) {
      const child = node.children?.get(level);
      if (!child) return false;
      path.push([node, level]);
      node = child;
    }
    if (node.topic === undefined) return false;
    node.topic = undefined;
    node.value = undefined;
    this.#size--;
    for (let i = path.length - 1; i >= 0; i--) {
      const [parent, level] = path[i]!;
      const child = parent.children!.get(level)!;
      if (child.topic !== undefined || (child.children && child.children.size > 0)) break;
      parent.children!.delete(level);
    }
    return true;
  }

  has(topic: string): boolean {
    return this.#find(topic)?.topic !== undefined;
  }

  /** The value of `topic`, or undefined when it is not held. */
  get(topic: string): V | undefined {
    return this.#find(topic)?.value;
  }

  #find(topic: string): TopicNode<V> | undefined {
    let node: TopicNode<V> | undefined = this.#root;
    for (const level of topic.split(SEPARATOR)) {
      node = node.children?.get(level);
      if (!node) return undefined;
    }
    return node;
  }

  /** Calls `emit` once for each held topic that `filter` matches, with its value. */
  match(filter: string, emit: (topic: string, value: V) => void): void {
    this.#walk(this.#root, filter.split(SEPARATOR), 0, emit);
  }

  #walk(node: TopicNode<V>, levels: readonly string[], depth: number, emit: (topic: string, value: V) => void): void {
    this.#visited++;
    if (depth === levels.length) {
      if (node.topic !== undefined) emit(node.topic, node.value as V);
      return;
    }
    const level = levels[depth]!;
    const atRoot = depth === 0;
    if (level === WILDCARD_SOME) {
      // `a/#` also matches `a` itself [MQTT-4.7.1-2]; the root is no topic.
      if (!atRoot && node.topic !== undefined) emit(node.topic, node.value as V);
      this.#emitSubtree(node, atRoot, emit);
      return;
    }
    if (!node.children) return;
    if (level === WILDCARD_ONE) {
      for (const [name, child] of node.children) {
        if (atRoot && name.startsWith('$')) continue;
        this.#walk(child, levels, depth + 1, emit);
      }
      return;
    }
    const child = node.children.get(level);
    if (child) this.#walk(child, levels, depth + 1, emit);
  }

  #emitSubtree(start: TopicNode<V>, skipDollar: boolean, emit: (topic: string, value: V) => void): void {
    // Iterative so a deep topic cannot overflow the stack.
    const stack: TopicNode<V>[] = [];
    for (const [name, child] of start.children ?? []) {
      if (skipDollar && name.startsWith('$')) continue;
      stack.push(child);
    }
    while (stack.length > 0) {
      const node = stack.pop()!;
      this.#visited++;
      if (node.topic !== undefined) emit(node.topic, node.value as V);
      if (node.children) for (const child of node.children.values()) stack.push(child);
    }
  }
}
