/**
 * A full disk: at runtime nothing is acknowledged while the store cannot be
 * written, the daemon stays up and says why (log line, /readyz), writes
 * resume by themselves once space is freed, and nothing acknowledged before
 * or after is lost, across a restart too. At start-up a full disk is one
 * clear line and its own exit code, never a silent empty start.
 *
 * The data directory is a small tmpfs (tests run as root; without the mount
 * the test is skipped, saying so), filled with a filler file until ENOSPC.
 */
import t, { type Test } from 'tap';
import { execFileSync } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { access, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import type { Packet } from 'mqtt-packet';
import { createDaemon, type Daemon } from '../src/index.js';
import { ExitCode } from '../src/cli/io.js';
import { captureLogs, ERROR, type CapturedLogs } from './helpers/logs.js';
import { tempDir, testConfig } from './helpers/daemon.js';
import { connectRaw, eventually, openClient, type RawClient } from './helpers/mqtt.js';
import { CliProcess, execCli, staleBuildNote, writeConfig } from './helpers/process.js';

const TMPFS_SIZE = '4m';

/** Mounts a tmpfs of TMPFS_SIZE on a fresh directory; `unmount` undoes both. */
function mount(): { dir: string; unmount: () => void } {
  const dir = mkdtempSync(path.join(tmpdir(), 'edgemqtt-full-'));
  try {
    execFileSync('mount', ['-t', 'tmpfs', '-o', `size=${TMPFS_SIZE}`, 'tmpfs', dir], { stdio: 'pipe' });
  } catch (error) {
    rmSync(dir, { recursive: true, force: true });
    const stderr = (error as { stderr?: Buffer }).stderr?.toString().trim();
    throw new Error(`cannot mount a tmpfs (needs root): ${stderr || (error as Error).message}`);
  }
  return {
    dir,
    unmount() {
      // Lazy: a daemon left running by a failed assertion must not block the unmount.
      execFileSync('umount', ['-l', dir], { stdio: 'pipe' });
      rmSync(dir, { recursive: true, force: true });
    },
  };
}

/** Why the tests are skipped (no mount possible: not root), or false. */
const cannotMount: string | false = (() => {
  try {
    mount().unmount();
    return false;
  } catch (error) {
    return (error as Error).message;
  }
})();

/** A tmpfs data directory for this test, unmounted in its teardown. */
function mountTmpfs(t: Test): string {
  const { dir, unmount } = mount();
  t.teardown(unmount);
  return dir;
}

/** Appends to `file` until the file system is full (ENOSPC), down to the last page. */
async function fill(file: string): Promise<void> {
  for (const size of [256 * 1024, 4096, 512, 1]) {
    const chunk = Buffer.alloc(size, 0x5a);
    for (;;) {
      try {
        await writeFile(file, chunk, { flag: 'a' });
      } catch (error) {
        if ((error as NodeJS.ErrnoException).code !== 'ENOSPC') throw error;
        break;
      }
    }
  }
}

type Version = 4 | 5;

function connectPacket(clientId: string, protocolVersion: Version): Packet {
  return { cmd: 'connect', protocolId: 'MQTT', protocolVersion, clientId, clean: false, keepalive: 0 };
}

/**
 * A publisher at either protocol level. MQTT 5 matters here: aedes 2 answers
 * a failed publish on a level-5 connection with PUBACK 0x87 and keeps the
 * connection, which tells the publisher to drop the message; the broker must
 * close instead, with no PUBACK at all (aedes-seam/seam.ts).
 */
async function publisher(t: Test, url: string, protocolVersion: Version = 4): Promise<RawClient> {
  const raw = await connectRaw(t, url, { protocolVersion });
  raw.send(connectPacket('publisher', protocolVersion));
  await raw.waitForPacket('connack');
  return raw;
}

/** Any PUBACK for `messageId`, whatever its Reason Code: a 0x87 one counts too. */
function pubacked(raw: RawClient, messageId: number): boolean {
  return raw.packets.some((packet) => packet.cmd === 'puback' && packet.messageId === messageId);
}

/** Publishes a QoS 1 message and waits for its PUBACK. */
async function publishAcked(raw: RawClient, messageId: number, payload: string | Buffer): Promise<void> {
  raw.send({ cmd: 'publish', topic: 'fd/t', qos: 1, messageId, payload, retain: false, dup: false });
  await raw.waitFor(() => pubacked(raw, messageId), 5000, `PUBACK ${messageId}`);
}

async function http(url: string): Promise<{ status: number; body: string }> {
  const response = await fetch(url);
  return { status: response.status, body: await response.text() };
}

async function runDaemon(t: Test, dataDir: string, logs: CapturedLogs): Promise<{ daemon: Daemon; url: string; httpUrl: string }> {
  const daemon = await createDaemon(testConfig(t, { dataDir }), { logger: logs.logger });
  t.teardown(() => daemon.stop());
  await daemon.start();
  const { mqtt, http } = daemon.addresses();
  return { daemon, url: `mqtt://127.0.0.1:${mqtt!.port}`, httpUrl: `http://127.0.0.1:${http!.port}` };
}

for (const version of [4, 5] as const) {
  const level = version === 5 ? 'MQTT 5' : 'MQTT 3.1.1';
  t.test(`at runtime (${level} publishers): no PUBACK while the disk is full, writes resume once space is freed, nothing acknowledged is lost`, { skip: cannotMount }, async (t) => {
    const dir = mountTmpfs(t);
    const filler = path.join(dir, 'filler');
    const logs = captureLogs();
    const first = await runDaemon(t, dir, logs);

    // Two persistent sessions: one offline until after a restart (what is
    // published is queued on disk for it), one connected throughout.
    const subscriber = await openClient(t, first.url, { clientId: 'device', clean: false });
    await subscriber.client.subscribeAsync('fd/t', { qos: 1 });
    await subscriber.client.endAsync();
    const live = await openClient(t, first.url, { clientId: 'live', clean: false });
    await live.client.subscribeAsync('fd/t', { qos: 1 });

    const before = await publisher(t, first.url, version);
    await publishAcked(before, 1, 'acked-before');

    await fill(filler);
    // Larger than the slack left in the write-ahead log's last page.
    const big = Buffer.alloc(64 * 1024, 0x42);
    before.send({ cmd: 'publish', topic: 'fd/t', qos: 1, messageId: 2, payload: big, retain: false, dup: false });
    await before.waitForClose(5000);
    t.notOk(pubacked(before, 2), 'no PUBACK for the publish the store could not take');

    const logged = logs.lines.filter((line) => line.level === ERROR && line.code === 'EDGEMQTT_STORE_FULL');
    t.equal(logged.length, 1, 'one error line with a stable code');
    t.match(logged[0]?.msg, /store is full/);
    t.equal((await http(`${first.httpUrl}/healthz`)).status, 200, 'alive');
    const notReady = await http(`${first.httpUrl}/readyz`);
    t.equal(notReady.status, 503, 'not ready while store writes fail');
    t.match(notReady.body, /store writes are failing \(EDGEMQTT_STORE_FULL\)/);

    // Still full: a retry is refused too, the connection closed, nothing acknowledged.
    const retry = await publisher(t, first.url, version);
    retry.send({ cmd: 'publish', topic: 'fd/t', qos: 1, messageId: 3, payload: 'while-full', retain: false, dup: false });
    await retry.waitForClose(5000);
    t.notOk(pubacked(retry, 3), 'no PUBACK while the disk is still full');

    await rm(filler);
    await eventually(async () => (await http(`${first.httpUrl}/readyz`)).status === 200, 10_000, '/readyz 200 after space is freed');
    t.ok(logs.find('store reopened').length > 0, 'the store reopened by itself');

    const after = await publisher(t, first.url, version);
    await publishAcked(after, 4, 'acked-after');
    await publishAcked(after, 5, 'acked-after-2');

    await live.log.waitFor((m) => m.some((x) => x.payload === 'acked-after-2'), 5000, 'acked-after-2, live');
    const livePayloads = live.log.messages.map((m) => m.payload);
    for (const acked of ['acked-before', 'acked-after']) t.ok(livePayloads.includes(acked), `${acked} delivered live`);
    await live.client.endAsync();
    await first.daemon.stop();

    // Across a restart: every acknowledged message is still queued (the failed
    // write left a torn record in LevelDB's log; appending after it would lose
    // what follows when the log is replayed).
    const second = await runDaemon(t, dir, captureLogs());
    const back = await openClient(t, second.url, { clientId: 'device', clean: false });
    await back.client.subscribeAsync('fd/t', { qos: 1 });
    const fresh = await publisher(t, second.url, version);
    await publishAcked(fresh, 6, 'marker');
    await back.log.waitFor((m) => m.some((x) => x.payload === 'marker'), 5000, 'the marker');
    const payloads = back.log.messages.map((m) => m.payload);
    for (const acked of ['acked-before', 'acked-after', 'acked-after-2']) t.ok(payloads.includes(acked), `${acked} survived`);
  });
}

t.test('at start-up: a full disk is one clear line and exit 71, never a silent empty start', { skip: cannotMount }, async (t) => {
  const note = staleBuildNote();
  if (note) {
    t.fail(note);
    return;
  }
  const dir = mountTmpfs(t);
  const confDir = tempDir(t, 'edgemqtt-full-conf-');
  const configPath = await writeConfig(confDir, {
    dataDir: dir,
    log: { level: 'info' },
    mqtt: { host: '127.0.0.1', port: 0 },
    http: { enabled: false },
  });
  const store = path.join(dir, 'store');

  // A store with a retained message in it.
  const running = new CliProcess(t, ['start', '--config', configPath], { cwd: confDir });
  const ready = await running.waitForLog('edgemqtt ready');
  const port = (ready.addresses as { mqtt: { port: number } }).mqtt.port;
  const client = await openClient(t, `mqtt://127.0.0.1:${port}`);
  await client.client.publishAsync('fd/retained', 'kept', { qos: 1, retain: true });
  await client.client.endAsync();
  running.signal('SIGTERM');
  t.equal((await running.waitForExit()).code, 0);

  await fill(path.join(dir, 'filler'));
  const failed = await execCli(t, ['start', '--config', configPath], { cwd: confDir });
  t.equal(failed.code, ExitCode.storeFull, 'exit 71');
  t.equal(failed.stderrLines.length, 1, 'one stderr line');
  t.match(failed.stderrLines[0], `edgemqtt: store ${store} cannot be written: no space left on its file system`);
  t.match(failed.logs.at(-1), { msg: 'start failed', code: 'EDGEMQTT_STORE_FULL' });
  t.notOk(failed.logs.some((line) => line.msg === 'edgemqtt ready'), 'never ready');
  await access(path.join(store, 'CURRENT'));

  await rm(path.join(dir, 'filler'));
  const again = new CliProcess(t, ['start', '--config', configPath], { cwd: confDir });
  const readyAgain = await again.waitForLog('edgemqtt ready');
  const portAgain = (readyAgain.addresses as { mqtt: { port: number } }).mqtt.port;
  const reader = await openClient(t, `mqtt://127.0.0.1:${portAgain}`);
  await reader.client.subscribeAsync('fd/retained', { qos: 1 });
  await reader.log.waitFor((m) => m.some((x) => x.payload === 'kept'), 5000, 'the retained message');
  await reader.client.endAsync();
  again.signal('SIGTERM');
  t.equal((await again.waitForExit()).code, 0);
});
