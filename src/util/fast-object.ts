/**
 * Objects with no Object.prototype in their chain (`constructor`,
 * `toString` and `__proto__` are plain missing keys), like
 * `Object.create(null)` and `{ __proto__: null }`, but which V8 keeps in fast
 * mode: those two start as a property dictionary of 160 bytes, where one of
 * these with a few keys takes a few dozen. A delete other than of the last
 * key added turns one into a dictionary, as those are from the start.
 *
 * Node's EventEmitter keeps its listeners in such a `{ __proto__: null }`
 * table (lib/events.js), one per emitter: per connection, a client, its
 * parser and its WebSocket each hold one for their whole life.
 */
const NoPrototype = function NoPrototype() {} as unknown as new () => Record<PropertyKey, unknown>;
NoPrototype.prototype = Object.freeze(Object.create(null) as object) as Record<PropertyKey, unknown>;

/** A fast-mode, prototype-free copy of `source`'s own keys, in their order (see NoPrototype). */
export function withoutPrototype<T extends object>(source: T): T {
  const copy = new NoPrototype();
  for (const key of Reflect.ownKeys(source)) copy[key] = (source as Record<PropertyKey, unknown>)[key];
  return copy as T;
}

/**
 * Makes an EventEmitter's listener table a fast-mode copy (withoutPrototype),
 * for an emitter whose listeners stay as they are for most of its life.
 * EventEmitter reads and writes `_events` as a plain property, and replaces
 * it with a new dictionary when its last listener goes.
 */
export function compactListeners(emitter: NodeJS.EventEmitter): void {
  const holder = emitter as unknown as { _events?: object };
  if (holder._events !== undefined) holder._events = withoutPrototype(holder._events);
}

/**
 * Replaces each of an emitter's listener lists by an exact-size copy. A list
 * that grew by push (a third listener and on) has room for ~20: 176 bytes
 * for the four or five a connection's 'close' keeps for its whole life.
 * EventEmitter only reads a list, or replaces or splices it: a copy in its
 * place behaves the same. For an emitter whose listeners stay as they are.
 */
export function compactListenerLists(emitter: NodeJS.EventEmitter): void {
  const events = (emitter as unknown as { _events?: Record<PropertyKey, unknown> })._events;
  if (events === undefined) return;
  for (const key of Reflect.ownKeys(events)) {
    const listeners = events[key];
    if (Array.isArray(listeners) && listeners.length > 2) events[key] = listeners.slice();
  }
}
