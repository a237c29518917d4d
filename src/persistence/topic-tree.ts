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

/**
 * A level of the tree. Its children are kept by level name: none, one (the
 * child itself, which knows its name), or a Map once there are two or more.
 * Most nodes near the leaves have a single child (`device/42/state` has one
 * `state`), and a Map for one entry costs ~210 bytes (the Map and its table),
 * which was a third of what a retained message cost in memory
 * (bench/persistence-retained.ts).
 */
class TopicNode<V> {
  children: TopicNode<V> | Map<string, TopicNode<V>> | undefined = undefined;
  /** The full topic when a retained message exists at exactly this node. */
  topic: string | undefined = undefined;
  value: V | undefined = undefined;

  constructor(readonly name: string) {}

  child(level: string): TopicNode<V> | undefined {
    const children = this.children;
    if (children === undefined || children instanceof Map) return children?.get(level);
    return children.name === level ? children : undefined;
  }

  /** The child named `level`, created if absent. */
  childOrNew(level: string): TopicNode<V> {
    const children = this.children;
    if (children === undefined) return (this.children = new TopicNode(level));
    if (children instanceof Map) {
      let child = children.get(level);
      if (child === undefined) {
        child = new TopicNode(level);
        children.set(level, child);
      }
      return child;
    }
    if (children.name === level) return children;
    const child = new TopicNode<V>(level);
    this.children = new Map([
      [children.name, children],
      [level, child],
    ]);
    return child;
  }

  removeChild(level: string): void {
    const children = this.children;
    if (!(children instanceof Map)) {
      if (children?.name === level) this.children = undefined;
      return;
    }
    children.delete(level);
    // Back to the single form, so churn leaves no Map behind.
    if (children.size === 1) this.children = children.values().next().value;
  }

  hasChildren(): boolean {
    return this.children !== undefined;
  }

  /** The children, each once, in insertion order (a single child alone). */
  eachChild(visit: (child: TopicNode<V>) => void): void {
    const children = this.children;
    if (children === undefined) return;
    if (children instanceof Map) for (const child of children.values()) visit(child);
    else visit(children);
  }
}

const SEPARATOR = '/';
const WILDCARD_ONE = '+';
const WILDCARD_SOME = '#';

export class TopicTree<V> {
  readonly #root = new TopicNode<V>('');
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
    for (const level of topic.split(SEPARATOR)) node = node.childOrNew(level);
    const previous = node.value;
    node.value = value;
    if (node.topic !== undefined) return previous;
    node.topic = topic;
    this.#size++;
    return undefined;
  }

  /** Removes `topic` and prunes branches left empty; false when it was absent. */
  delete(topic: string): boolean {
    return this.#remove(topic) !== undefined;
  }

  /** Removes `topic` as delete() does and returns its value (undefined when absent): one walk, not a get() and a delete(). */
  take(topic: string): V | undefined {
    return this.#remove(topic)?.value;
  }

  /** The removed topic's value, in an object (the value itself may be undefined); undefined when the topic was absent. */
  #remove(topic: string): { value: V | undefined } | undefined {
    const path: TopicNode<V>[] = [];
    let node = this.#root;
    for (const level of topic.split(SEPARATOR)) {
      const child = node.child(level);
      if (!child) return undefined;
      path.push(node);
      node = child;
    }
    if (node.topic === undefined) return undefined;
    const removed = { value: node.value };
    node.topic = undefined;
    node.value = undefined;
    this.#size--;
    for (let i = path.length - 1; i >= 0; i--) {
      if (node.topic !== undefined || node.hasChildren()) break;
      const parent = path[i]!;
      parent.removeChild(node.name);
      node = parent;
    }
    return removed;
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
      node = node.child(level);
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
    if (level === WILDCARD_ONE) {
      node.eachChild((child) => {
        if (!(atRoot && child.name.startsWith('$'))) this.#walk(child, levels, depth + 1, emit);
      });
      return;
    }
    const child = node.child(level);
    if (child) this.#walk(child, levels, depth + 1, emit);
  }

  #emitSubtree(start: TopicNode<V>, skipDollar: boolean, emit: (topic: string, value: V) => void): void {
    // Iterative so a deep topic cannot overflow the stack.
    const stack: TopicNode<V>[] = [];
    start.eachChild((child) => {
      if (!(skipDollar && child.name.startsWith('$'))) stack.push(child);
    });
    const push = (child: TopicNode<V>) => stack.push(child);
    while (stack.length > 0) {
      const node = stack.pop()!;
      this.#visited++;
      if (node.topic !== undefined) emit(node.topic, node.value as V);
      node.eachChild(push);
    }
  }
}
