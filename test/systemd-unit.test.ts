/**
 * systemd/edgemqtt.service: what systemd itself says about it (verify,
 * security), that it agrees with the code (exit codes, stop deadline, env
 * names, the CLI path), and that node under its syscall filter would not be
 * refused a call: the daemon runs under strace through start, MQTT over TCP
 * and WebSocket, reload, watchdog and stop, and every call it makes is
 * checked against the filter as systemd expands it.
 */
import { execFile, spawnSync } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import t from 'tap';
import { STOP_GRACE_MS } from '../src/cli/commands/start.js';
import { ExitCode } from '../src/cli/io.js';
import { configKeys } from '../src/config/load.js';
import { configSchema } from '../src/config/schema.js';
import { connectClient } from './helpers/mqtt.js';
import { CliProcess, NotifySocket, assertBuilt, repoRoot, writeConfig, type LogLine } from './helpers/process.js';

const run = promisify(execFile);
const unitPath = path.join(repoRoot, 'systemd', 'edgemqtt.service');
const unitText = readFileSync(unitPath, 'utf8');

/** The highest `systemd-analyze security` exposure accepted; measured 1.3 with systemd 252. */
const MAX_EXPOSURE = 1.5;

const hasCommand = (command: string) => spawnSync(command, ['--version'], { stdio: 'ignore' }).error === undefined;
const noSystemdAnalyze = hasCommand('systemd-analyze') ? false : 'systemd-analyze is not installed (Debian: apt install systemd)';

/** Directives by section, each with every value it is given, in order. */
function parseUnit(text: string): Map<string, Map<string, string[]>> {
  const sections = new Map<string, Map<string, string[]>>();
  let current: Map<string, string[]> | undefined;
  for (const raw of text.split('\n')) {
    const line = raw.trim();
    if (line === '' || line.startsWith('#') || line.startsWith(';')) continue;
    const section = /^\[(.+)\]$/.exec(line);
    if (section) {
      current = new Map();
      sections.set(section[1]!, current);
      continue;
    }
    const equals = line.indexOf('=');
    if (!current || equals < 0) throw new Error(`unexpected line in the unit: ${raw}`);
    const key = line.slice(0, equals);
    current.set(key, [...(current.get(key) ?? []), line.slice(equals + 1)]);
  }
  return sections;
}

const unit = parseUnit(unitText);
const service = unit.get('Service') ?? new Map<string, string[]>();
const last = (key: string) => service.get(key)?.at(-1);

/** Seconds in a systemd time span such as `20s`, `1min 30s` or `20`. */
function seconds(span: string): number {
  const units: Record<string, number> = { '': 1, s: 1, sec: 1, m: 60, min: 60, h: 3600 };
  let total = 0;
  for (const [, value, unitName] of span.matchAll(/(\d+(?:\.\d+)?)\s*([a-z]*)/g)) {
    const factor = units[unitName!];
    if (factor === undefined) throw new Error(`unknown time unit in ${span}`);
    total += Number(value) * factor;
  }
  return total;
}

t.test('the unit agrees with the daemon', async (t) => {
  t.equal(last('Type'), 'notify');
  t.equal(last('NotifyAccess'), 'all', 'notifications come from systemd-notify children');
  const execStart = last('ExecStart')?.split(/\s+/) ?? [];
  // The young-generation cap is the memory/CPU trade measured in docs/performance.md.
  t.same(execStart, ['/usr/bin/node', '--max-semi-space-size=4', '/usr/lib/edgemqtt/dist/bin/edgemqtt.js', 'start', '--config', '/etc/edgemqtt/edgemqtt.yaml']);
  const packageJson = JSON.parse(readFileSync(path.join(repoRoot, 'package.json'), 'utf8')) as { bin: Record<string, string> };
  t.equal(execStart[2], path.posix.join('/usr/lib/edgemqtt', packageJson.bin.edgemqtt!), 'ExecStart runs the package bin');
  t.match(last('ExecReload'), /kill -HUP \$MAINPID$/);
  t.equal(last('Restart'), 'on-failure');
  t.ok(last('RestartPreventExitStatus')?.split(/\s+/).includes(String(ExitCode.config)), 'a bad config (78) is not restarted');
  t.ok(last('WatchdogSec'), 'a watchdog is configured');

  const shutdownSec = configSchema.parse({}).shutdown.timeoutSec;
  const stopSec = seconds(last('TimeoutStopSec') ?? '90');
  t.ok(
    stopSec * 1000 > shutdownSec * 1000 + STOP_GRACE_MS,
    `TimeoutStopSec (${stopSec} s) outlasts shutdown.timeoutSec (${shutdownSec} s) + ${STOP_GRACE_MS} ms grace`,
  );

  const environment = (service.get('Environment') ?? []).map((item) => item.split('=')[0]!);
  const envNames = new Set(configKeys.map((key) => key.envName));
  for (const name of environment.filter((item) => item.startsWith('EDGEMQTT_'))) {
    t.ok(envNames.has(name), `${name} is a config variable`);
  }
  t.ok((service.get('Environment') ?? []).includes('EDGEMQTT_DATA_DIR=/var/lib/edgemqtt'));
  t.equal(last('WorkingDirectory'), '/var/lib/edgemqtt');
  t.equal(last('StateDirectory'), 'edgemqtt');
  t.equal(last('ConfigurationDirectory'), 'edgemqtt');
  t.equal(last('User'), 'edgemqtt');

  t.notOk(service.has('MemoryDenyWriteExecute'), "no MemoryDenyWriteExecute: V8's JIT needs W+X memory");
  const filter = (service.get('SystemCallFilter') ?? []).join(' ').split(/\s+/);
  t.ok(filter.includes('pkey_alloc') || filter.includes('@pkey'), "pkey_alloc is allowed (systemd 252's @system-service lacks it)");
  t.equal(last('CapabilityBoundingSet'), '', 'no capabilities');
});

t.test('systemd-analyze verify prints nothing', { skip: noSystemdAnalyze }, async (t) => {
  let target = unitPath;
  if (!existsSync('/usr/bin/node')) {
    // verify checks that ExecStart's binary exists; elsewhere, check the rest of the unit.
    const dir = await mkdtemp(path.join(os.tmpdir(), 'edgemqtt-unit-'));
    t.teardown(() => rm(dir, { recursive: true, force: true }));
    target = path.join(dir, 'edgemqtt.service');
    await writeFile(target, unitText.replaceAll('/usr/bin/node', process.execPath));
    t.comment(`/usr/bin/node is missing here: verifying a copy that runs ${process.execPath}`);
  }
  const { stdout, stderr } = await run('systemd-analyze', ['verify', target], { timeout: 30_000 });
  t.equal(stdout, '', 'nothing on stdout');
  t.equal(stderr, '', 'nothing on stderr');
});

t.test(`systemd-analyze security rates the unit at most ${MAX_EXPOSURE}`, { skip: noSystemdAnalyze }, async (t) => {
  const { stdout } = await run('systemd-analyze', ['security', '--offline=yes', '--no-pager', unitPath], { timeout: 30_000 });
  const overall = /Overall exposure level for edgemqtt\.service: (\d+(?:\.\d+)?) (\S+)/.exec(stdout);
  if (!overall) throw new Error(`no overall exposure level in:\n${stdout}`);
  const score = Number(overall[1]);
  t.comment(`exposure ${score} ${overall[2]}; remaining exposure:`);
  for (const line of stdout.split('\n').filter((item) => item.startsWith('✗'))) {
    t.comment(`  ${line.replace(/\s{2,}/g, '  ')}`);
  }
  t.ok(score <= MAX_EXPOSURE, `exposure ${score} <= ${MAX_EXPOSURE}`);
});

/** Every group systemd knows, expanded to plain system call names. */
async function syscallGroups(): Promise<Map<string, string[]>> {
  const { stdout } = await run('systemd-analyze', ['syscall-filter', '--no-pager'], { timeout: 30_000 });
  const groups = new Map<string, string[]>();
  let current: string[] | undefined;
  for (const line of stdout.split('\n')) {
    if (line.startsWith('@')) {
      current = [];
      groups.set(line.trim(), current);
    } else if (!line.startsWith(' ')) {
      current = undefined; // a trailing comment block
    } else if (current && !line.trim().startsWith('#') && line.trim() !== '') {
      current.push(line.trim());
    }
  }
  return groups;
}

function expand(groups: Map<string, string[]>, name: string): Set<string> {
  if (!name.startsWith('@')) return new Set([name]);
  const members = groups.get(name);
  if (!members) throw new Error(`systemd does not know the group ${name}`);
  return new Set(members.flatMap((member) => [...expand(groups, member)]));
}

/** The calls the unit's SystemCallFilter= lines allow, as systemd combines them. */
function allowedSyscalls(groups: Map<string, string[]>): Set<string> {
  const allowed = new Set<string>();
  const denied = new Set<string>();
  for (const value of service.get('SystemCallFilter') ?? []) {
    const deny = value.startsWith('~');
    for (const token of value.replace(/^~/, '').split(/\s+/).filter(Boolean)) {
      for (const call of expand(groups, token)) (deny ? denied : allowed).add(call);
    }
  }
  for (const call of denied) allowed.delete(call);
  return allowed;
}

const noStrace = noSystemdAnalyze || (hasCommand('strace') ? false : 'strace is not installed (Debian: apt install strace)');

t.test("every system call of a daemon's life is inside the unit's SystemCallFilter", { skip: noStrace }, async (t) => {
  assertBuilt();
  const allowed = allowedSyscalls(await syscallGroups());
  t.ok(allowed.has('read') && allowed.has('epoll_wait'), 'the filter expands to real calls');

  const dir = t.testdir();
  const notify = await NotifySocket.open(t);
  const configPath = await writeConfig(dir, {
    dataDir: path.join(dir, 'data'),
    mqtt: { host: '127.0.0.1', port: 0 },
    http: { host: '127.0.0.1', port: 0 },
  });
  const tracePath = path.join(dir, 'syscalls.txt');
  // -f: also the systemd-notify children, which run under the same filter.
  const cli = new CliProcess(t, ['start', '--config', configPath], {
    cwd: dir,
    env: { NOTIFY_SOCKET: notify.path, WATCHDOG_USEC: '200000' },
    wrapper: ['strace', '-f', '-qq', '-s', '0', '-e', 'signal=none', '-o', tracePath],
  });
  const { item: ready, index: readyAt } = await notify.waitFor('READY=1', { timeoutMs: 60_000 });
  const mainPid = Number(ready.assignments.find((item) => item.startsWith('MAINPID='))?.slice('MAINPID='.length));
  t.ok(mainPid > 0 && mainPid !== cli.pid, 'MAINPID is node under strace');
  const readyLine: LogLine = await cli.waitForLog('edgemqtt ready', { timeoutMs: 10_000 });
  const addresses = readyLine.addresses as { mqtt: { port: number }; http: { port: number } };

  // Traffic over both transports, a health probe, a reload, watchdog pings.
  const subscriber = await connectClient(t, `ws://127.0.0.1:${addresses.http.port}/mqtt`, { connectTimeout: 30_000 });
  await subscriber.subscribeAsync('trace/#', { qos: 1 });
  const received = new Promise<string>((resolve) => subscriber.once('message', (_topic, payload) => resolve(payload.toString())));
  const publisher = await connectClient(t, `mqtt://127.0.0.1:${addresses.mqtt.port}`, { connectTimeout: 30_000 });
  await publisher.publishAsync('trace/a', 'hello', { qos: 1 });
  t.equal(await received, 'hello', 'a message went from TCP to WebSocket');
  const readyz = await fetch(`http://127.0.0.1:${addresses.http.port}/readyz`);
  t.equal(readyz.status, 200);
  await readyz.body?.cancel();
  process.kill(mainPid, 'SIGHUP');
  const { index: reloadingAt } = await notify.waitFor('RELOADING=1', { from: readyAt + 1, timeoutMs: 30_000 });
  await notify.waitFor('READY=1', { from: reloadingAt + 1, timeoutMs: 30_000 });
  await notify.waitFor('WATCHDOG=1', { timeoutMs: 30_000 });
  await subscriber.endAsync();
  await publisher.endAsync();
  process.kill(mainPid, 'SIGTERM');
  const exit = await cli.waitForExit(60_000);
  t.equal(exit.code, 0, 'node exited 0 (strace passes its status on)');

  // Each call has one line `PID name(…` (complete or `<unfinished …>`); an
  // unknown number shows as `syscall_0x…` and so fails the check too.
  const trace = readFileSync(tracePath, 'utf8');
  const used = [...new Set([...trace.matchAll(/^\d+\s+([a-z_][a-z0-9_]*)\(/gm)].map((match) => match[1]!))].sort();
  t.ok(used.length > 20, `${used.length} distinct system calls traced`);
  t.comment(`node called pkey_alloc: ${used.includes('pkey_alloc') ? 'yes' : 'no'}`);
  t.same(
    used.filter((call) => !allowed.has(call)),
    [],
    'no call outside the filter (each would fail with EPERM under the unit)',
  );

  const families = [...new Set([...trace.matchAll(/^\d+\s+socket(?:pair)?\((AF_[A-Z0-9]+)/gm)].map((match) => match[1]!))];
  const allowedFamilies = (last('RestrictAddressFamilies') ?? '').split(/\s+/);
  t.ok(families.length > 0, `socket families used: ${families.join(' ')}`);
  t.same(
    families.filter((family) => !allowedFamilies.includes(family)),
    [],
    'every socket family is in RestrictAddressFamilies',
  );
});
