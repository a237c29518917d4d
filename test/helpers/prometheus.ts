/**
 * A real Prometheus server (Debian's `prometheus` package) for tests: a temp
 * config scraping the given targets every second, a temp TSDB, a loopback
 * port; values read back through its HTTP query API. Stopped in teardown.
 */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { writeFileSync } from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import type { Test } from 'tap';
import { tempDir } from './daemon.js';

export const prometheusBinary = process.env.PROMETHEUS ?? 'prometheus';
export const promtoolBinary = process.env.PROMTOOL ?? 'promtool';

/** Why the tests cannot run Prometheus here, or undefined when they can. */
export function prometheusUnavailable(): string | undefined {
  for (const binary of [prometheusBinary, promtoolBinary]) {
    const probe = spawnSync(binary, ['--version'], { encoding: 'utf8' });
    if (probe.error) return `${binary} not found (apt-get install prometheus)`;
  }
  return undefined;
}

/** A port free right now: bind port 0, read the port, close. */
export async function freePort(): Promise<number> {
  const server = net.createServer();
  await new Promise<void>((resolve, reject) => server.listen(0, '127.0.0.1', resolve).once('error', reject));
  const { port } = server.address() as net.AddressInfo;
  await new Promise((resolve) => server.close(resolve));
  return port;
}

export interface Prometheus {
  url: string;
  /** The value of an instant query that yields one sample, or undefined when it yields none. */
  query(expression: string): Promise<number | undefined>;
  /** Polls `expression` until it yields `expected`; rejects with the last value after `timeoutMs`. */
  waitFor(expression: string, expected: number, timeoutMs?: number): Promise<void>;
}

/** Starts Prometheus scraping `targets` (`host:port`) at `metricsPath` every second; resolves once it is ready. */
export async function startPrometheus(t: Test, targets: string[], metricsPath = '/metrics'): Promise<Prometheus> {
  const dir = tempDir(t, 'edgemqtt-prometheus-');
  const configFile = path.join(dir, 'prometheus.yml');
  writeFileSync(
    configFile,
    [
      'global:',
      '  scrape_interval: 1s',
      '  scrape_timeout: 1s',
      'scrape_configs:',
      '  - job_name: edgemqtt',
      `    metrics_path: ${metricsPath}`,
      '    static_configs:',
      `      - targets: [${targets.map((target) => `'${target}'`).join(', ')}]`,
      '',
    ].join('\n'),
  );
  const port = await freePort();
  const child: ChildProcess = spawn(
    prometheusBinary,
    [`--config.file=${configFile}`, `--storage.tsdb.path=${path.join(dir, 'data')}`, `--web.listen-address=127.0.0.1:${port}`, '--log.level=warn'],
    { stdio: ['ignore', 'ignore', 'pipe'] },
  );
  let stderr = '';
  child.stderr?.on('data', (chunk: Buffer) => (stderr += chunk.toString()));
  t.teardown(() => stop(child));
  const url = `http://127.0.0.1:${port}`;

  const deadline = Date.now() + 20_000;
  for (;;) {
    if (child.exitCode !== null) throw new Error(`prometheus exited with ${child.exitCode}: ${stderr}`);
    const ready = await fetch(`${url}/-/ready`).then((response) => response.ok, () => false);
    if (ready) break;
    if (Date.now() > deadline) throw new Error(`prometheus not ready after 20 s: ${stderr}`);
    await new Promise((resolve) => setTimeout(resolve, 100));
  }

  async function query(expression: string): Promise<number | undefined> {
    const response = await fetch(`${url}/api/v1/query?query=${encodeURIComponent(expression)}`);
    const body = (await response.json()) as { status: string; error?: string; data?: { result: Array<{ value: [number, string] }> } };
    if (body.status !== 'success') throw new Error(`query ${expression} failed: ${body.error}`);
    const result = body.data?.result ?? [];
    if (result.length > 1) throw new Error(`query ${expression} yields ${result.length} series, not one`);
    return result.length === 0 ? undefined : Number(result[0]!.value[1]);
  }

  return {
    url,
    query,
    async waitFor(expression, expected, timeoutMs = 20_000) {
      const until = Date.now() + timeoutMs;
      let last: number | undefined;
      for (;;) {
        last = await query(expression);
        if (last === expected) return;
        if (Date.now() > until) throw new Error(`${expression} is ${last}, not ${expected}, after ${timeoutMs} ms`);
        await new Promise((resolve) => setTimeout(resolve, 250));
      }
    },
  };
}

async function stop(child: ChildProcess): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return;
  const exited = new Promise((resolve) => child.once('exit', resolve));
  child.kill('SIGTERM');
  const timer = setTimeout(() => child.kill('SIGKILL'), 5000);
  await exited;
  clearTimeout(timer);
}
