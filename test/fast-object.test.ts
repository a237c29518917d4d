/**
 * The listener-table helpers of src/util/fast-object.ts: an emitter behaves
 * the same after its table or its lists are compacted.
 */
import t from 'tap';
import { EventEmitter } from 'node:events';
import { compactListenerLists, compactListeners } from '../src/util/fast-object.js';

t.test('an emitter whose listener lists were compacted calls, adds and removes listeners as before', async (t) => {
  const emitter = new EventEmitter();
  const calls: string[] = [];
  const named = (name: string) => () => void calls.push(name);
  const [a, b, c, d] = ['a', 'b', 'c', 'd'].map(named) as [() => void, () => void, () => void, () => void];
  emitter.on('close', a);
  emitter.on('close', b);
  emitter.once('close', c);
  emitter.on('close', d);
  emitter.on('end', a);
  emitter.on('error', b);
  emitter.on('error', c);
  compactListeners(emitter);
  compactListenerLists(emitter);
  t.same(emitter.eventNames(), ['close', 'end', 'error'], 'the same events');
  t.equal(emitter.listenerCount('close'), 4);
  emitter.emit('close');
  t.same(calls, ['a', 'b', 'c', 'd'], 'in the order added');
  calls.length = 0;
  emitter.emit('close');
  t.same(calls, ['a', 'b', 'd'], 'a once() listener only once');
  emitter.removeListener('close', b);
  emitter.on('close', c);
  calls.length = 0;
  emitter.emit('close');
  t.same(calls, ['a', 'd', 'c'], 'one removed, one added after');
  calls.length = 0;
  emitter.emit('end');
  emitter.emit('error', new Error('x'));
  t.same(calls, ['a', 'b', 'c'], 'the single and the pair as before');
  emitter.removeAllListeners('close');
  t.equal(emitter.listenerCount('close'), 0, 'all removed');
});
