#!/usr/bin/env node
/**
 * npm's `prepare` step: runs on `npm ci` / `npm install` in a checkout.
 *
 * With the dev dependencies installed (a development checkout), it compiles
 * src/ to dist/. On a gateway, `npm ci --omit=dev` installs no TypeScript:
 * there the build must already be in dist/ (copied from the build machine),
 * and this step only checks that it is, instead of failing the install.
 * On `npm pack` and `npm publish`, `prepack` has just built: nothing to do.
 */
import { spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { createRequire } from 'node:module';
import { fileURLToPath } from 'node:url';

const root = fileURLToPath(new URL('..', import.meta.url));
const built = fileURLToPath(new URL('../dist/bin/edgemqtt.js', import.meta.url));

if (process.env.npm_command === 'pack' || process.env.npm_command === 'publish') process.exit(0);

let tsc;
try {
  tsc = createRequire(import.meta.url).resolve('typescript/bin/tsc');
} catch {
  tsc = undefined;
}

if (tsc) {
  const result = spawnSync(process.execPath, [tsc, '-p', 'tsconfig.json'], { cwd: root, stdio: 'inherit' });
  process.exit(result.status ?? 1);
}
if (existsSync(built)) {
  console.log('edgemqtt: TypeScript is not installed (a production install): using the build already in dist/');
  process.exit(0);
}
console.error(
  'edgemqtt: dist/ holds no build and TypeScript is not installed to make one.\n' +
    'Run `npm ci` (with the dev dependencies) and `npm run build` where TypeScript is, then copy dist/ here.',
);
process.exit(1);
