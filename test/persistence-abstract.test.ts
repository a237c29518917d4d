/**
 * aedes-persistence's own conformance suite (abstract.js) against the LevelDB
 * persistence. abstract.js is written for node:test, whose TAP output tap
 * reads, so this file uses node:test only (mixing in tap's `t` would
 * interleave two TAP streams). Each instance gets its own temporary store.
 */
import { after, test } from 'node:test';
import { mkdtempSync, rmSync } from 'node:fs';
import { createRequire } from 'node:module';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { createLogger } from '../src/observability/logger.js';
import { createLevelPersistence } from '../src/persistence/index.js';

type AbstractSuite = (options: {
  test: typeof test;
  persistence: () => unknown;
  testAsync: boolean;
}) => void;

const abstractPersistence = createRequire(import.meta.url)('aedes-persistence/abstract.js') as AbstractSuite;

const root = mkdtempSync(path.join(tmpdir(), 'edgemqtt-abstract-'));
after(() => rmSync(root, { recursive: true, force: true }));

const logger = createLogger({ level: 'silent' });
let instances = 0;

abstractPersistence({
  test,
  // testAsync: the suite calls `await instance.setup(broker)` and uses the
  // promise API directly, as aedes 1.x does; destroy() closes the store.
  testAsync: true,
  persistence: () => createLevelPersistence({ path: path.join(root, `store-${++instances}`) }, { logger }),
});
