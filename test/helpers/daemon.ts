/**
 * Starts a real daemon in-process on loopback with OS-chosen ports and a
 * temporary data dir; the test's teardown stops it.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import type { Test } from 'tap';
import { createDaemon, type Daemon, type DaemonDeps } from '../../src/index.js';
import type { ConfigInput } from '../../src/config/schema.js';

export interface RunningDaemon {
  daemon: Daemon;
  /** mqtt://127.0.0.1:PORT */
  mqttUrl: string;
  /** ws://127.0.0.1:PORT/mqtt */
  wsUrl: string;
  /** http://127.0.0.1:PORT */
  httpUrl: string;
  mqttPort: number;
  httpPort: number;
}

type DeepPartial<T> = { [K in keyof T]?: T[K] extends object ? (T[K] extends unknown[] ? T[K] : DeepPartial<T[K]>) : T[K] };

/**
 * A daemon on exactly `config` (no test defaults merged in; a fixed dataDir
 * survives a stop and a second run), stopped at the end of the test.
 */
export async function runDaemon(t: Test, config: ConfigInput): Promise<{ daemon: Daemon; url: string }> {
  const daemon = await createDaemon(config);
  t.teardown(() => daemon.stop());
  await daemon.start();
  return { daemon, url: `mqtt://127.0.0.1:${daemon.addresses().mqtt!.port}` };
}

/** A fresh temporary directory, removed when the test ends. */
export function tempDir(t: Test, prefix = 'edgemqtt-test-'): string {
  const dir = mkdtempSync(path.join(tmpdir(), prefix));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  return dir;
}

export function testConfig(t: Test, overrides: DeepPartial<ConfigInput> = {}): ConfigInput {
  const base: ConfigInput = {
    // Not t.testdir(): each call of that wipes the test's directory.
    dataDir: tempDir(t),
    // EDGEMQTT_TEST_LOG=debug shows the daemon's log while debugging a test.
    log: { level: (process.env.EDGEMQTT_TEST_LOG as 'debug' | undefined) ?? 'silent' },
    mqtt: { host: '127.0.0.1', port: 0 },
    http: { host: '127.0.0.1', port: 0 },
  };
  return deepMerge(base, overrides) as ConfigInput;
}

export async function startDaemon(t: Test, overrides: DeepPartial<ConfigInput> = {}, deps: DaemonDeps = {}): Promise<RunningDaemon> {
  const daemon = await createDaemon(testConfig(t, overrides), deps);
  t.teardown(() => daemon.stop());
  await daemon.start();
  const { mqtt, http } = daemon.addresses();
  const mqttPort = mqtt?.port ?? 0;
  const httpPort = http?.port ?? 0;
  const path = daemon.config.http.websocket.path;
  return {
    daemon,
    mqttPort,
    httpPort,
    mqttUrl: `mqtt://127.0.0.1:${mqttPort}`,
    wsUrl: `ws://127.0.0.1:${httpPort}${path}`,
    httpUrl: `http://127.0.0.1:${httpPort}`,
  };
}

function deepMerge(base: unknown, extra: unknown): unknown {
  if (!isPlainObject(base) || !isPlainObject(extra)) return extra === undefined ? base : extra;
  const result: Record<string, unknown> = { ...base };
  for (const [key, value] of Object.entries(extra)) result[key] = deepMerge(base[key], value);
  return result;
}

function isPlainObject(value: unknown): value is Record<string, unknown> {
  return value !== null && typeof value === 'object' && !Array.isArray(value);
}
