/**
 * The package version, for `edgemqtt_build_info`, `$SYS/broker/version` and
 * the admin API's status. package.json sits two levels up from both
 * src/util/ and dist/util/.
 */
import { readFileSync } from 'node:fs';

/** Read once: the file does not change while the process runs, and every daemon asks. */
let cached: string | undefined;

export function packageVersion(): string {
  cached ??= readVersion();
  return cached;
}

function readVersion(): string {
  try {
    const text = readFileSync(new URL('../../package.json', import.meta.url), 'utf8');
    const version = (JSON.parse(text) as { version?: unknown }).version;
    return typeof version === 'string' ? version : 'unknown';
  } catch {
    // An embedder that bundled the code without its package.json.
    return 'unknown';
  }
}
