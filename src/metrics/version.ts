/**
 * The package version, for `edgemqtt_build_info` and `$SYS/broker/version`.
 * package.json sits two levels up from both src/metrics/ and dist/metrics/.
 */
import { readFileSync } from 'node:fs';

export function packageVersion(): string {
  try {
    const text = readFileSync(new URL('../../package.json', import.meta.url), 'utf8');
    const version = (JSON.parse(text) as { version?: unknown }).version;
    return typeof version === 'string' ? version : 'unknown';
  } catch {
    // An embedder that bundled the code without its package.json.
    return 'unknown';
  }
}
