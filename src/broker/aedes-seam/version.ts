/** The aedes release the seam is written for, and the check that refuses any other at start. */
import { readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import path from 'node:path';
import { EdgeMqttError } from '../../errors.js';

/** The aedes release this module was written against; package.json pins it too. */
export const AEDES_VERSION = '2.0.0-beta.1';

/** The version of the aedes package that `import 'aedes'` loads. */
export function installedAedesVersion(): string {
  const require = createRequire(import.meta.url);
  // aedes' "exports" does not list its package.json: find it next to the entry point.
  let dir = path.dirname(require.resolve('aedes'));
  for (;;) {
    try {
      const manifest = JSON.parse(readFileSync(path.join(dir, 'package.json'), 'utf8')) as { name?: string; version?: string };
      if (manifest.name === 'aedes' && typeof manifest.version === 'string') return manifest.version;
    } catch {
      // No package.json here: look one level up.
    }
    const parent = path.dirname(dir);
    if (parent === dir) throw new Error('cannot find the package.json of the installed aedes');
    dir = parent;
  }
}

/** Throws unless `found` is the aedes version the hooks here were written for. */
export function checkAedesVersion(found: string): void {
  if (found === AEDES_VERSION) return;
  throw new EdgeMqttError(
    'EDGEMQTT_AEDES_VERSION',
    `aedes ${found} is installed, but edgemqtt is built for aedes ${AEDES_VERSION} exactly: ` +
      `it corrects aedes internals that another release may have changed (src/broker/aedes-seam/); install aedes@${AEDES_VERSION}`,
  );
}
