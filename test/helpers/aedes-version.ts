/**
 * The major version of the aedes installed: MQTT 5 connections reach the
 * broker only from aedes 2 on (aedes 1 answers a level-5 CONNECT with
 * CONNACK 0x01), so tests of MQTT 5 through the daemon skip before that.
 */
import { createRequire } from 'node:module';
import { existsSync, readFileSync } from 'node:fs';
import path from 'node:path';

export function installedAedesMajor(): number {
  let dir = path.dirname(createRequire(import.meta.url).resolve('aedes'));
  for (;;) {
    const manifest = path.join(dir, 'package.json');
    if (existsSync(manifest)) {
      const { name, version } = JSON.parse(readFileSync(manifest, 'utf8')) as { name?: string; version: string };
      if (name === 'aedes') return Number(version.split('.')[0]);
    }
    const parent = path.dirname(dir);
    if (parent === dir) throw new Error('aedes package.json not found');
    dir = parent;
  }
}

/** Why MQTT 5 tests through the daemon skip, or false when they can run. */
export function mqtt5Unavailable(): string | false {
  const major = installedAedesMajor();
  return major >= 2 ? false : `aedes ${major}.x refuses MQTT 5 connections (CONNACK 0x01); these cases run with aedes 2`;
}
