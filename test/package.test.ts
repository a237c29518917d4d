/**
 * The Debian package, as an operator uses it, on a Debian 12 guest with
 * systemd as PID 1 (test/helpers/guest.ts): `apt install ./edgemqtt_*.deb`
 * starts a working service; `systemctl reload` applies an edited config
 * without a restart; installing the next version keeps the sessions, the
 * retained messages and the edited config; `apt remove` keeps the data;
 * `apt purge` takes the data and the user away.
 *
 * Skipped where systemd-nspawn cannot run (not root, no systemd-nspawn) or no
 * guest root can be had (no cache and no debootstrap or mirror).
 */
import { spawnSync } from 'node:child_process';
import { readFileSync, statSync } from 'node:fs';
import { copyFile } from 'node:fs/promises';
import path from 'node:path';
import t from 'tap';
import { tempDir } from './helpers/daemon.js';
import { Guest, guestRoot, guestUnavailable, hostNodeDeb } from './helpers/guest.js';
import { assertBuilt, fixturesDir, repoRoot } from './helpers/process.js';

const unavailable = guestUnavailable();
const rootStarted = Date.now();
// Built on first use (about a minute) and cached; see scripts/debian/guest-root.sh.
// That first build gets time of its own; the test itself keeps the usual limit.
if (!unavailable) t.setTimeout(15 * 60_000);
const root = unavailable ? undefined : guestRoot();
const rootMs = Date.now() - rootStarted;
if (!unavailable) t.setTimeout(180_000);
const skip = unavailable || (root && 'error' in root ? root.error : false);

const manifest = JSON.parse(readFileSync(path.join(repoRoot, 'package.json'), 'utf8')) as { version: string };
const version = manifest.version.replace('-', '~');
const nextVersion = `${version}+next1`;
const SHARE = '/mnt/edgemqtt';
const CONFIG = '/etc/edgemqtt/edgemqtt.yaml';
const PASSWORD = 'pkg-secret-17';
const credentials = `MQTT_USER=sensor MQTT_PASSWORD=${PASSWORD}`;

function buildPackage(out: string, debianVersion?: string): string {
  // gzip: xz (the default) spends a minute of a loaded 2-core machine on two packages.
  const args = [path.join(repoRoot, 'scripts', 'package-deb.mjs'), '--out', out, '--compression', 'gzip'];
  if (debianVersion) args.push('--version', debianVersion);
  const result = spawnSync(process.execPath, args, { encoding: 'utf8', timeout: 120_000 });
  if (result.status !== 0) throw new Error(`package-deb failed: ${result.stderr}`);
  return path.join(out, `edgemqtt_${debianVersion ?? version}_all.deb`);
}

/** The JSON line test/fixtures/guest-client.mjs prints, run in the guest. */
async function client(guest: Guest, mode: string, env = ''): Promise<Record<string, unknown>> {
  const result = await guest.run(`${env} node ${SHARE}/guest-client.mjs ${mode}`, { timeoutMs: 60_000 });
  const line = result.stdout.trim().split('\n').at(-1) ?? '';
  try {
    return JSON.parse(line) as Record<string, unknown>;
  } catch {
    throw new Error(`guest-client ${mode} printed no JSON (${result.code}):\n${result.stdout}${result.stderr}`);
  }
}

const UNIT_STATE = ['Type', 'ActiveState', 'SubState', 'StatusText', 'UnitFileState', 'MainPID', 'NRestarts'];

/** The unit's state once it is active, or as it is at the deadline. */
async function activeAgain(guest: Guest, deadline = Date.now() + 30_000): Promise<Record<string, string>> {
  let state = await guest.show('edgemqtt', UNIT_STATE);
  while (state.ActiveState !== 'active' && Date.now() < deadline) {
    await new Promise((resolve) => setTimeout(resolve, 100));
    state = await guest.show('edgemqtt', UNIT_STATE);
  }
  return state;
}

const mib = (bytes: number) => `${(bytes / 1024 / 1024).toFixed(1)} MiB`;

t.test('the Debian package on a Debian 12 guest under systemd', { skip }, async (t) => {
  assertBuilt();
  if (root && 'root' in root) t.comment(`guest root ${root.root} ready in ${rootMs} ms`);
  const share = tempDir(t, 'edgemqtt-deb-');
  let started = Date.now();
  const firstDeb = buildPackage(share);
  const nextDeb = buildPackage(share, nextVersion);
  t.comment(`built ${path.basename(firstDeb)} (${mib(statSync(firstDeb).size)}) and ${path.basename(nextDeb)} in ${Date.now() - started} ms`);
  await hostNodeDeb(share);
  await copyFile(path.join(fixturesDir, 'guest-client.mjs'), path.join(share, 'guest-client.mjs'));

  started = Date.now();
  const guest = await Guest.boot(t, (root as { root: string }).root, share, share);
  t.comment(`guest booted in ${Date.now() - started} ms`);
  await guest.ok(`dpkg -i ${SHARE}/nodejs-host.deb`, { timeoutMs: 120_000 });
  t.equal((await guest.ok('node --version')).trim(), `v${process.versions.node}`, "the guest runs this machine's node");

  await t.test('apt install: the service runs, enabled, and serves MQTT and /readyz', async (t) => {
    started = Date.now();
    const install = await guest.run(`apt-get install -y --no-install-recommends ${SHARE}/${path.basename(firstDeb)}`, { timeoutMs: 120_000 });
    const installMs = Date.now() - started;
    t.equal(install.code, 0, `apt-get install exits 0${install.code === 0 ? '' : `:\n${install.stdout}${install.stderr}`}`);
    t.comment(`apt-get install of ${mib(statSync(firstDeb).size)} took ${installMs} ms in the guest (it returns once the service is ready)`);

    // Type=notify: "active" means systemd received READY=1.
    const state = await activeAgain(guest, started + 30_000);
    t.equal(state.Type, 'notify');
    t.equal(state.ActiveState, 'active', `active ${Date.now() - started} ms after apt-get install began`);
    t.equal(state.SubState, 'running');
    t.equal(state.StatusText, 'accepting MQTT connections', 'the STATUS= sent with READY=1');
    t.equal(state.UnitFileState, 'enabled', 'enabled: it starts at boot');
    t.equal(state.NRestarts, '0');

    t.match(await guest.ok('getent passwd edgemqtt'), /^edgemqtt:x:\d+:\d+:edgemqtt MQTT broker:\/var\/lib\/edgemqtt:\/usr\/sbin\/nologin$/m, 'a system user without login');
    t.equal((await guest.ok(`stat -c '%U:%G %a' ${CONFIG}`)).trim(), 'root:edgemqtt 640', 'the config: root may edit, the service may read');
    t.equal((await guest.ok(`stat -c '%U:%G %a' /var/lib/edgemqtt`)).trim(), 'edgemqtt:edgemqtt 750', 'the state directory belongs to the service');
    t.equal((await guest.ok('command -v edgemqtt')).trim(), '/usr/bin/edgemqtt', 'edgemqtt is on PATH');
    const check = await guest.run(`runuser -u edgemqtt -- edgemqtt check-config ${CONFIG}`);
    t.equal(check.code, 0, `check-config as the service user accepts the installed config ${check.stdout}${check.stderr}`);

    const roundtrip = await client(guest, 'roundtrip');
    t.equal(roundtrip.message, 'through the packaged broker', 'CONNACK, then a message from one client to another');
    t.equal(roundtrip.readyz, 200, '/readyz answers 200');
  });

  await t.test('an edited config and systemctl reload: applied without a restart', async (t) => {
    await guest.ok(`printf '%s\\n' '${PASSWORD}' > /root/password`);
    await guest.ok('edgemqtt passwd add /etc/edgemqtt/passwd sensor --password-file /root/password');
    await guest.ok('chown root:edgemqtt /etc/edgemqtt/passwd && chmod 0640 /etc/edgemqtt/passwd');
    await guest.ok(`sed -i -e 's/^  allowAnonymous: true$/  allowAnonymous: false/' -e 's#^  passwordFile: ""$#  passwordFile: /etc/edgemqtt/passwd#' ${CONFIG}`);
    t.equal((await guest.ok(`grep -cE '^  (allowAnonymous: false|passwordFile: /etc/edgemqtt/passwd)$' ${CONFIG}`)).trim(), '2', 'both keys edited');
    t.same(await client(guest, 'connect'), { connected: true, returnCode: 0 }, 'before the reload, anonymous clients are still let in');

    const before = await guest.show('edgemqtt', ['MainPID', 'NRestarts']);
    const reload = await guest.run('systemctl reload edgemqtt');
    t.equal(reload.code, 0, `systemctl reload exits 0 ${reload.stderr}`);
    // systemd 252 ends the reload job when ExecReload's kill exits; the unit
    // stays "reloading" from the daemon's RELOADING=1 until its READY=1.
    const after = await activeAgain(guest);
    t.equal(after.ActiveState, 'active', 'active again: READY=1 came after RELOADING=1');
    t.equal(after.MainPID, before.MainPID, 'the same process: no restart');
    t.equal(after.NRestarts, before.NRestarts);

    const anonymous = await client(guest, 'connect');
    t.equal(anonymous.connected, false, 'an anonymous client is refused now');
    t.match(String(anonymous.error), /Not authorized/i);
    t.same(await client(guest, 'connect', credentials), { connected: true, returnCode: 0 }, 'a user of the new password file gets in');
  });

  await t.test('the next version over it: sessions, retained messages and the edited config survive', async (t) => {
    t.same(await client(guest, 'prepare', credentials), { prepared: true });
    const before = await guest.show('edgemqtt', ['MainPID']);
    started = Date.now();
    const upgrade = await guest.run(`apt-get install -y --no-install-recommends ${SHARE}/${path.basename(nextDeb)}`, { timeoutMs: 120_000 });
    t.equal(upgrade.code, 0, `apt-get install of the next version exits 0${upgrade.code === 0 ? '' : `:\n${upgrade.stdout}${upgrade.stderr}`}`);
    t.comment(`upgrade took ${Date.now() - started} ms`);
    t.equal((await guest.ok("dpkg-query -W -f '${Version}' edgemqtt")).trim(), nextVersion);

    const after = await activeAgain(guest);
    t.equal(after.ActiveState, 'active');
    t.not(after.MainPID, before.MainPID, 'restarted on the new code');
    t.equal((await guest.ok(`grep -cE '^  (allowAnonymous: false|passwordFile: /etc/edgemqtt/passwd)$' ${CONFIG}`)).trim(), '2', 'the edited config is kept');
    t.equal((await guest.ok(`stat -c '%U:%G %a' ${CONFIG}`)).trim(), 'root:edgemqtt 640');

    const verify = await client(guest, 'verify', credentials);
    t.equal(verify.sessionPresent, true, 'the persistent session is still there');
    t.equal(verify.queued, 'sent while the keeper was away', 'the message queued for it is delivered');
    t.same(verify.retained, { payload: 'open', retain: true }, 'the retained message is still retained');
    t.equal(verify.version, `edgemqtt version ${nextVersion.replace('~', '-')}`, 'the running broker is the new version');
  });

  await t.test('apt remove keeps the data; apt purge takes data and user away', async (t) => {
    const remove = await guest.run('apt-get remove -y edgemqtt', { timeoutMs: 120_000 });
    t.equal(remove.code, 0, `apt-get remove exits 0 ${remove.code === 0 ? '' : remove.stdout + remove.stderr}`);
    t.not((await guest.run('systemctl is-active edgemqtt')).stdout.trim(), 'active', 'the service is stopped');
    t.equal((await guest.run('test -e /usr/lib/edgemqtt')).code, 1, 'the code is gone');
    t.ok(Number((await guest.ok('find /var/lib/edgemqtt -type f | wc -l')).trim()) > 0, 'the data in /var/lib/edgemqtt is kept');
    t.equal((await guest.run(`test -e ${CONFIG}`)).code, 0, 'the config is kept');
    t.equal((await guest.run('getent passwd edgemqtt')).code, 0, 'the user is kept');

    const purge = await guest.run('apt-get purge -y edgemqtt', { timeoutMs: 120_000 });
    t.equal(purge.code, 0, `apt-get purge exits 0 ${purge.code === 0 ? '' : purge.stdout + purge.stderr}`);
    t.equal((await guest.run('test -e /var/lib/edgemqtt')).code, 1, 'the data is gone');
    t.equal((await guest.run('getent passwd edgemqtt')).code, 2, 'the user is gone');
    t.equal((await guest.run('getent group edgemqtt')).code, 2, 'the group is gone');
    t.equal((await guest.run(`test -e ${CONFIG}`)).code, 1, 'the packaged config is gone');
    t.equal((await guest.run('test -e /etc/systemd/system/multi-user.target.wants/edgemqtt.service')).code, 1, 'no enablement link is left');
    t.equal((await guest.run('dpkg-query -W edgemqtt')).code, 1, 'dpkg knows the package no more');
  });
});
