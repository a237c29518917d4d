/**
 * RateLimitedLog: the first event of a key is logged at once, later ones
 * within the interval are swallowed and reported as `suppressed` on the next
 * line; keys are independent.
 */
import t from 'tap';
import { RateLimitedLog } from '../src/util/rate-limited-log.js';
import { captureLogs } from './helpers/logs.js';

t.test('one line per key per interval, with what was suppressed', async (t) => {
  const logs = captureLogs();
  let now = 0;
  const log = new RateLimitedLog(logs.logger, 10_000, () => now);
  for (let i = 0; i < 5; i++) log.warn('a', { i }, 'limit a');
  log.info('b', {}, 'limit b');
  t.same(
    logs.lines.map((line) => [line.msg, line.i, line.suppressed]),
    [
      ['limit a', 0, undefined],
      ['limit b', undefined, undefined],
    ],
    'the first of each key, at once',
  );
  now = 9_999;
  log.warn('a', { i: 5 }, 'limit a');
  t.equal(logs.lines.length, 2, 'still inside the interval');
  now = 10_000;
  log.warn('a', { i: 6 }, 'limit a');
  t.same(logs.lines.at(-1), { ...logs.lines.at(-1), msg: 'limit a', i: 6, suppressed: 5 }, 'next line carries the 5 suppressed');
  now = 30_000;
  log.warn('a', { i: 7 }, 'limit a');
  t.equal(logs.lines.at(-1)?.suppressed, undefined, 'nothing suppressed since');
  t.equal(logs.lines.at(-1)?.level, 'warn', 'at the level asked for');
});

t.test('fields given as a function are made only for a line that is written', async (t) => {
  const logs = captureLogs();
  let now = 0;
  const log = new RateLimitedLog(logs.logger, 10_000, () => now);
  let made = 0;
  const fields = () => ({ made: ++made });
  for (let i = 0; i < 100; i++) log.info('wait', fields, 'waits');
  t.equal(made, 1, 'once, for the first line');
  now = 10_000;
  log.info('wait', fields, 'waits');
  t.equal(made, 2);
  t.same(logs.lines.map((line) => [line.made, line.suppressed]), [
    [1, undefined],
    [2, 99],
  ]);
});
