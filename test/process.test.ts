/**
 * The daemon as systemd runs it: the built CLI in a child process, real
 * signals, a real notify socket (a python3 child, as Node cannot bind one),
 * real MQTT clients on loopback. Four tests inject a fault with
 * `node --import test/fixtures/fault-*.mjs` to make a stop or a start hang
 * on demand; everything else is the unmodified daemon.
 */
import { closeSync, fstatSync, openSync, readFileSync } from 'node:fs';
import path from 'node:path';
import { pathToFileURL } from 'node:url';
import t, { type Test } from 'tap';
import { connectClient, eventually } from './helpers/mqtt.js';
import {
  CliProcess,
  NotifySocket,
  carries,
  fixturesDir,
  parseLogLine,
  staleBuildNote,
  writeConfig,
  assertBuilt,
  type LogLine,
} from './helpers/process.js';

assertBuilt();
const stale = staleBuildNote();
if (stale) t.comment(`warning: ${stale}`);

const faultStuckStop = pathToFileURL(path.join(fixturesDir, 'fault-stuck-stop.mjs')).href;
const faultHoldListen = pathToFileURL(path.join(fixturesDir, 'fault-hold-listen.mjs')).href;

interface ConfigOverrides {
  log?: { level: string };
  mqtt?: Record<string, unknown>;
  shutdown?: { timeoutSec: number };
}

/** A config on loopback with OS-chosen ports; the daemon logs the ports it got. */
function configFor(dir: string, overrides: ConfigOverrides = {}): Record<string, unknown> {
  return {
    dataDir: path.join(dir, 'data'),
    log: { level: 'info', ...overrides.log },
    mqtt: { host: '127.0.0.1', port: 0, ...overrides.mqtt },
    http: { host: '127.0.0.1', port: 0 },
    ...(overrides.shutdown ? { shutdown: overrides.shutdown } : {}),
  };
}

function portsOf(readyLine: LogLine): { mqttPort: number; httpPort: number } {
  const addresses = readyLine.addresses as { mqtt?: { port: number }; http?: { port: number } } | undefined;
  const mqttPort = addresses?.mqtt?.port;
  const httpPort = addresses?.http?.port;
  if (!mqttPort || !httpPort) throw new Error(`no ports in ${JSON.stringify(readyLine)}`);
  return { mqttPort, httpPort };
}

function once<T>(emitter: { once(event: string, listener: (value: T) => void): unknown }, event: string, timeoutMs: number): Promise<T> {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`no '${event}' within ${timeoutMs} ms`)), timeoutMs);
    emitter.once(event, (value: T) => {
      clearTimeout(timer);
      resolve(value);
    });
  });
}

const msgs = (lines: LogLine[]) => lines.map((line) => line.msg);

t.test('READY=1 comes once MQTT and HTTP accept connections; SIGTERM sends STOPPING=1 and exits 0', async (t) => {
  const dir = t.testdir();
  const notify = await NotifySocket.open(t);
  const configPath = await writeConfig(dir, configFor(dir));
  const cli = new CliProcess(t, ['start', '--config', configPath], { cwd: dir, env: { NOTIFY_SOCKET: notify.path } });

  const { item: ready } = await notify.waitFor('READY=1');
  // Acting on READY=1 as a dependent unit would: the ports (logged just before
  // READY=1 was sent) must already take an MQTT session and a /readyz probe.
  const { mqttPort, httpPort } = portsOf(await cli.waitForLog('edgemqtt ready'));
  const client = await connectClient(t, `mqtt://127.0.0.1:${mqttPort}`);
  t.ok(client.connected, 'an MQTT client connects right after READY=1');
  const readyz = await fetch(`http://127.0.0.1:${httpPort}/readyz`);
  t.equal(readyz.status, 200, '/readyz answers 200 right after READY=1');
  await readyz.body?.cancel();
  t.ok(carries(ready, `MAINPID=${cli.pid}`), 'READY=1 names the node process as MAINPID');
  t.ok(ready.assignments.some((item) => item.startsWith('STATUS=')), 'READY=1 carries a STATUS');
  t.equal(notify.count('READY=1'), 1, 'READY=1 is sent once');
  t.equal(notify.count('STOPPING=1'), 0, 'no STOPPING=1 before a stop');

  const clientClosed = once(client, 'close', 10_000);
  cli.signal('SIGTERM');
  const exit = await cli.waitForExit();
  t.same({ code: exit.code, signal: exit.signal }, { code: 0, signal: null }, 'exit code 0');
  await notify.waitFor('STOPPING=1');
  await clientClosed;
  t.pass('the connected client was disconnected');
  const stopRequested = cli.logs.items.find((line) => line.msg === 'stop requested');
  t.equal(stopRequested?.signal, 'SIGTERM', 'the log names the signal');
  t.ok(msgs(cli.logs.items).includes('stopped'), 'the daemon logged "stopped"');
  t.same(cli.strayStdout, [], 'every stdout line is a JSON log line');
  t.equal(cli.stderr, '', 'nothing on stderr');
});

t.test('SIGINT also stops with exit 0; without NOTIFY_SOCKET nothing is sent; a JOURNAL_STREAM that is not stdout adds no prefixes', async (t) => {
  const dir = t.testdir();
  const configPath = await writeConfig(dir, configFor(dir));
  // As inherited by a shell started from a service: set, but naming another stream.
  const cli = new CliProcess(t, ['start', '--config', configPath], { cwd: dir, env: { JOURNAL_STREAM: '8:12345' } });
  await cli.waitForLog('edgemqtt ready');
  cli.signal('SIGINT');
  const exit = await cli.waitForExit();
  t.same({ code: exit.code, signal: exit.signal }, { code: 0, signal: null }, 'exit code 0');
  t.equal(cli.logs.items.find((line) => line.msg === 'stop requested')?.signal, 'SIGINT', 'the log names the signal');
  t.ok(cli.logs.items.length > 0 && cli.logs.items.every((line) => line.priority === undefined), 'no <N> prefixes');
  t.notOk(msgs(cli.logs.items).includes('systemd notification failed'), 'no notification attempted');
  t.same(cli.strayStdout, [], 'every stdout line is a JSON log line');
});

t.test('SIGHUP applies log.level live, reports keys that need a restart, and refuses a broken file', async (t) => {
  const dir = t.testdir();
  const notify = await NotifySocket.open(t);
  const configPath = await writeConfig(dir, configFor(dir));
  const cli = new CliProcess(t, ['start', '--config', configPath], { cwd: dir, env: { NOTIFY_SOCKET: notify.path } });
  const { index: readyAt } = await notify.waitFor('READY=1');
  const { mqttPort } = portsOf(await cli.waitForLog('edgemqtt ready'));
  const url = `mqtt://127.0.0.1:${mqttPort}`;
  await connectClient(t, url, { clientId: 'before-reload' });

  /** Sends SIGHUP and waits for RELOADING=1 and then READY=1; returns the READY=1 datagram. */
  const reload = async (from: number) => {
    cli.signal('SIGHUP');
    const reloading = await notify.waitFor('RELOADING=1', { from });
    const ready = await notify.waitFor('READY=1', { from: reloading.index + 1 });
    return ready;
  };

  // 1. info → debug: applied without a restart.
  await writeConfig(dir, configFor(dir, { log: { level: 'debug' } }));
  const first = await reload(readyAt + 1);
  const applied = await cli.waitForLog('configuration reloaded');
  t.same(applied.applied, ['log.level'], 'log.level is applied');
  t.same(applied.needsRestart, [], 'nothing needs a restart');
  await connectClient(t, url, { clientId: 'after-reload' });
  // 'client authenticated' is a debug line (src/auth/authorizer.ts).
  const authenticated = await cli.waitForLog('client authenticated', { predicate: (line) => line.clientId === 'after-reload' });
  t.ok(authenticated, 'debug lines appear after the reload');
  const appliedAt = cli.logs.items.indexOf(applied);
  t.notOk(
    cli.logs.items.slice(0, appliedAt).some((line) => line.msg === 'client authenticated'),
    'no debug line was written before the reload (the first client connected at info)',
  );
  t.ok(
    cli.logs.items.slice(0, appliedAt).some((line) => line.msg === 'client connected' && line.clientId === 'before-reload'),
    'while its info line was',
  );

  // 2. A listener port change: reported as needing a restart, not applied.
  await writeConfig(dir, configFor(dir, { log: { level: 'debug' }, mqtt: { port: 1884 } }));
  const second = await reload(first.index + 1);
  // The warning follows the 'configuration reloaded' line, so both have been read.
  const warning = await cli.waitForLog('restart needed to apply mqtt.port');
  t.equal(warning.level, 'warn', 'logged as a warning');
  const reloaded = cli.logs.items.filter((line) => line.msg === 'configuration reloaded');
  t.same(reloaded[1]?.needsRestart, ['mqtt.port'], 'mqtt.port needs a restart');
  t.same(reloaded[1]?.applied, [], 'and nothing else changed');
  t.ok(
    second.item.assignments.some((item) => item.startsWith('STATUS=') && item.includes('mqtt.port')),
    'the service STATUS says so too',
  );
  await connectClient(t, url, { clientId: 'old-port-still-serves' });
  t.pass('the old port still serves');

  // 3. An invalid file: refused, the running config stays, READY=1 again.
  await writeConfig(dir, 'log:\n  level: loud\n');
  await reload(second.index + 1);
  const refused = await cli.waitForLog('reload refused: keeping the running configuration');
  t.match(refused.problems, [/^log\.level: /], 'the problem is named');
  await connectClient(t, url, { clientId: 'after-refused-reload' });
  t.equal(cli.exitStatus, undefined, 'still running');

  cli.signal('SIGTERM');
  t.equal((await cli.waitForExit()).code, 0, 'exit code 0');
});

t.test('WATCHDOG=1 pings repeat at WATCHDOG_USEC/2 while running and stop with STOPPING=1', async (t) => {
  const dir = t.testdir();
  const notify = await NotifySocket.open(t);
  const configPath = await writeConfig(dir, configFor(dir));
  const cli = new CliProcess(t, ['start', '--config', configPath], {
    cwd: dir,
    env: { NOTIFY_SOCKET: notify.path, WATCHDOG_USEC: '200000' },
  });
  const { index: readyAt } = await notify.waitFor('READY=1');
  await notify.messages.waitFor(
    (message) => carries(message, 'WATCHDOG=1') && notify.count('WATCHDOG=1') >= 5,
    'five WATCHDOG=1 pings',
  );
  t.pass('five WATCHDOG=1 pings arrived');
  t.ok(notify.messages.findIndex((message) => carries(message, 'WATCHDOG=1')) > readyAt, 'pings start after READY=1');

  cli.signal('SIGTERM');
  t.equal((await cli.waitForExit()).code, 0, 'exit code 0');
  const { index: stoppingAt } = await notify.waitFor('STOPPING=1');
  // The watchdog stops with STOPPING=1; one ping may already be on its way.
  t.ok(notify.count('WATCHDOG=1', stoppingAt + 1) <= 1, 'no pings after STOPPING=1 (but one in flight)');
});

t.test('with JOURNAL_STREAM naming stdout, every line carries its syslog priority', async (t) => {
  const dir = t.testdir();
  const notify = await NotifySocket.open(t);
  const configPath = await writeConfig(dir, configFor(dir));
  // stdout is a file whose device and inode the test knows, as journald's socket would be.
  const logPath = path.join(dir, 'stdout.log');
  const fd = openSync(logPath, 'w');
  const stat = fstatSync(fd, { bigint: true });
  const cli = new CliProcess(t, ['start', '--config', configPath, '--log-level', 'debug'], {
    cwd: dir,
    env: { NOTIFY_SOCKET: notify.path, JOURNAL_STREAM: `${stat.dev}:${stat.ino}` },
    stdoutFd: fd,
  });
  closeSync(fd);
  const readLines = () => readFileSync(logPath, 'utf8').split('\n').filter((line) => line !== '');

  const { index: readyAt } = await notify.waitFor('READY=1');
  const readyLine = readLines().map(parseLogLine).find((line) => line?.msg === 'edgemqtt ready');
  t.ok(readyLine, 'the ready line is in the file by READY=1');
  const { mqttPort } = portsOf(readyLine!);
  await connectClient(t, `mqtt://127.0.0.1:${mqttPort}`); // a debug line
  await eventually(() => readLines().some((line) => line.includes('"client connected"')), 10_000, 'the debug line');
  // A warning: a reload that needs a restart (the flag keeps log.level at debug).
  await writeConfig(dir, configFor(dir, { mqtt: { port: 1884 } }));
  cli.signal('SIGHUP');
  const { index: reloadingAt } = await notify.waitFor('RELOADING=1', { from: readyAt + 1 });
  await notify.waitFor('READY=1', { from: reloadingAt + 1 });
  cli.signal('SIGTERM');
  t.equal((await cli.waitForExit()).code, 0, 'exit code 0');

  const lines = readLines();
  t.ok(lines.every((line) => /^<[0-7]>\{/.test(line)), 'every line starts with <N>');
  const expected: Record<string, number> = { trace: 7, debug: 7, info: 6, warn: 4, error: 3, fatal: 2 };
  const parsed = lines.map(parseLogLine);
  t.ok(
    parsed.every((line) => line !== undefined && line.priority === expected[line.level]),
    'the prefix matches the level',
  );
  const priorities = new Set(parsed.map((line) => line?.priority));
  t.ok(priorities.has(6) && priorities.has(7) && priorities.has(4), 'info <6>, debug <7> and warning <4> all seen');
  t.ok(lines.some((line) => line.startsWith('<6>') && line.includes('"edgemqtt ready"')), 'info is <6>');
});

t.test('a second stop signal while the stop hangs exits at once with 130', async (t) => {
  const dir = t.testdir();
  // 60 s: far beyond this test's bounds, so only the second signal can end it.
  const configPath = await writeConfig(dir, configFor(dir, { shutdown: { timeoutSec: 60 } }));
  const cli = new CliProcess(t, ['start', '--config', configPath], { cwd: dir, nodeArgs: ['--import', faultStuckStop] });
  const { mqttPort } = portsOf(await cli.waitForLog('edgemqtt ready'));
  await connectClient(t, `mqtt://127.0.0.1:${mqttPort}`);

  cli.signal('SIGTERM');
  await cli.waitForLog('stopping');
  await eventually(() => cli.stderr.includes('fault: aedes close() never completes'), 10_000, 'the hung close');
  t.equal(cli.exitStatus, undefined, 'the stop hangs');
  cli.signal('SIGTERM');
  const exit = await cli.waitForExit();
  t.same({ code: exit.code, signal: exit.signal }, { code: 130, signal: null }, 'exit 130');
  t.ok(msgs(cli.logs.items).includes('second stop signal: exiting now'), 'the forced exit is logged');
  t.notOk(msgs(cli.logs.items).includes('stopped'), 'the graceful stop never finished');
});

t.test('a hung stop is cut at shutdown.timeoutSec and still exits 0', async (t) => {
  const dir = t.testdir();
  const configPath = await writeConfig(dir, configFor(dir, { shutdown: { timeoutSec: 1 } }));
  const cli = new CliProcess(t, ['start', '--config', configPath], { cwd: dir, nodeArgs: ['--import', faultStuckStop] });
  const { mqttPort } = portsOf(await cli.waitForLog('edgemqtt ready'));
  const client = await connectClient(t, `mqtt://127.0.0.1:${mqttPort}`);
  const clientClosed = once(client, 'close', 15_000);

  const signalledAt = performance.now();
  cli.signal('SIGTERM');
  const exit = await cli.waitForExit(15_000);
  const tookMs = performance.now() - signalledAt;
  t.same({ code: exit.code, signal: exit.signal }, { code: 0, signal: null }, 'exit 0');
  t.ok(tookMs >= 1000, `the deadline was waited for (${Math.round(tookMs)} ms)`);
  t.ok(msgs(cli.logs.items).includes('cutting connections that did not close in time'), 'the cut is logged');
  t.ok(msgs(cli.logs.items).includes('stopped'), 'the stop then completes');
  await clientClosed;
  t.pass('the client still connected at the deadline was cut');
});

/** Starts the CLI with listen() held by the fault preload, and waits until start-up hangs there. */
async function startHeldAtListen(t: Test): Promise<{ cli: CliProcess; notify: NotifySocket }> {
  const dir = t.testdir();
  const notify = await NotifySocket.open(t);
  const configPath = await writeConfig(dir, configFor(dir));
  const cli = new CliProcess(t, ['start', '--config', configPath], {
    cwd: dir,
    env: { NOTIFY_SOCKET: notify.path },
    nodeArgs: ['--import', faultHoldListen],
  });
  await cli.waitForLog('broker started');
  await eventually(() => cli.stderr.includes('fault: listen() held'), 10_000, 'the held listen');
  return { cli, notify };
}

t.test('a stop signal during start-up stops once start settles, without READY=1', async (t) => {
  const { cli, notify } = await startHeldAtListen(t);

  cli.signal('SIGTERM'); // as systemd does when TimeoutStartSec expires
  await cli.waitForLog('stop requested', { predicate: (line) => line.during === 'starting' });
  await notify.waitFor('STOPPING=1');
  t.equal(cli.exitStatus, undefined, 'still starting');
  cli.signal('SIGUSR2'); // release the held listen: start completes, then the stop runs

  const exit = await cli.waitForExit();
  t.same({ code: exit.code, signal: exit.signal }, { code: 0, signal: null }, 'a graceful exit 0, not a forced 130');
  t.notOk(msgs(cli.logs.items).includes('second stop signal: exiting now'), 'one signal counts once');
  t.ok(msgs(cli.logs.items).includes('stopped'), 'the started components were stopped');
  t.equal(notify.count('READY=1'), 0, 'READY=1 is never sent');
});

t.test('a second stop signal during a hung start-up exits at once with 130', async (t) => {
  const { cli, notify } = await startHeldAtListen(t);
  cli.signal('SIGTERM');
  await cli.waitForLog('stop requested');
  cli.signal('SIGTERM');
  const exit = await cli.waitForExit();
  t.same({ code: exit.code, signal: exit.signal }, { code: 130, signal: null }, 'exit 130 while start still hangs');
  t.ok(msgs(cli.logs.items).includes('second stop signal: exiting now'), 'the forced exit is logged');
  t.equal(notify.count('READY=1'), 0, 'READY=1 is never sent');
});

