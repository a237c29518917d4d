/**
 * `edgemqtt ctl`, the built CLI in a child process, against a daemon the test
 * starts: tables and --json, credentials from the environment, a password
 * file or a token file, and the exit codes a script checks (0, 1, 69, 77).
 * The last test runs `edgemqtt start` too, for a reload that re-reads the
 * config file as SIGHUP does.
 */
import t, { type Test } from 'tap';
import net from 'node:net';
import path from 'node:path';
import { writeFile } from 'node:fs/promises';
import { stringify } from 'yaml';
import { adminFiles, OPS, startAdminDaemon, TOKEN } from './helpers/admin.js';
import { connectClient, eventually } from './helpers/mqtt.js';
import { assertBuilt, CliProcess, execCli, staleBuildNote, type CliResult } from './helpers/process.js';

assertBuilt();
const stale = staleBuildNote();
if (stale) t.comment(`warning: ${stale}`);

/** Runs `edgemqtt ctl ...args` with the admin user's password in the environment. */
function ctl(t: Test, cwd: string, url: string, args: string[], env: Record<string, string> = { EDGEMQTT_CTL_PASSWORD: OPS.password }): Promise<CliResult> {
  return execCli(t, ['ctl', ...args], { cwd, env: { EDGEMQTT_CTL_URL: url, ...env } });
}

t.test('ctl: status, clients, client, disconnect, retained, blocks as tables and --json', async (t) => {
  const { daemon, httpUrl, mqttUrl, files } = await startAdminDaemon(t);
  const cwd = files.dir;
  const device = await connectClient(t, mqttUrl, { clientId: 'boiler-7', protocolVersion: 5 });
  await device.subscribeAsync('heating/#', { qos: 1, nl: true });
  await device.publishAsync('heating/boiler-7/state', 'on', { qos: 1, retain: true });
  await connectClient(t, mqttUrl, { clientId: 'lamp-1' });

  const status = await ctl(t, cwd, httpUrl, ['status', '--login', OPS.user]);
  t.equal(status.code, 0, status.stderr);
  t.match(status.stdout, /^version: \d+\.\d+\.\d+/m);
  t.match(status.stdout, /^clients connected: 2$/m);
  t.match(status.stdout, /^store: .*1 retained/m);

  const clients = await ctl(t, cwd, httpUrl, ['clients', '--login', OPS.user]);
  t.equal(clients.code, 0, clients.stderr);
  const lines = clients.stdout.trimEnd().split('\n');
  t.match(lines[0], /^ID\s+USER\s+ADDRESS\s+LISTENER/);
  t.match(lines[1], /^boiler-7\s+-\s+127\.0\.0\.1:\d+\s+mqtt\/5\s+yes\s+1\s/);
  t.match(lines[2], /^lamp-1\s/);
  t.equal(lines[3], '2 of 2 client(s)');

  const filtered = await ctl(t, cwd, httpUrl, ['clients', '--id', 'lamp', '--json', '--login', OPS.user]);
  t.equal(filtered.code, 0);
  const parsed = JSON.parse(filtered.stdout) as { total: number; clients: Array<{ id: string }> };
  t.equal(parsed.total, 1);
  t.equal(parsed.clients[0]?.id, 'lamp-1', '--json prints the API response');

  const one = await ctl(t, cwd, httpUrl, ['client', 'boiler-7', '--login', OPS.user]);
  t.match(one.stdout, /^protocol: 5$/m);
  t.match(one.stdout, /^heating\/#\s+1\s+noLocal$/m, 'subscriptions with their options');

  const retained = await ctl(t, cwd, httpUrl, ['retained', 'heating/#', '--login', OPS.user]);
  t.match(retained.stdout, /^heating\/boiler-7\/state\s+1\s+2\s+"on"$/m);
  t.match(retained.stdout, /^1 of 1 retained message\(s\)$/m);

  const blocks = await ctl(t, cwd, httpUrl, ['blocks', '--login', OPS.user]);
  t.equal(blocks.stdout, 'no login blocks\n');

  const closed = new Promise<void>((resolve) => device.once('close', () => resolve()));
  const kicked = await ctl(t, cwd, httpUrl, ['disconnect', 'boiler-7', '--token-file', files.tokenFile], {});
  t.equal(kicked.code, 0, kicked.stderr);
  t.equal(kicked.stdout, 'disconnected boiler-7\n');
  await closed;
  await eventually(() => daemon.trafficStats().disconnects.kicked === 1, 5000, 'the kick counted');

  const cleared = await ctl(t, cwd, httpUrl, ['clear-retained', 'heating/#', '--login', OPS.user]);
  t.equal(cleared.stdout, 'cleared 1 retained message(s)\n');
});

t.test('ctl exit codes: 1 not found or bad input, 77 refused, 69 unreachable; one line on stderr', async (t) => {
  const { httpUrl, files } = await startAdminDaemon(t);
  const cwd = files.dir;
  const missing = await ctl(t, cwd, httpUrl, ['client', 'nobody', '--login', OPS.user]);
  t.equal(missing.code, 1);
  t.match(missing.stderrLines, [/^edgemqtt ctl: no connected client with id "nobody"$/]);
  const badFilter = await ctl(t, cwd, httpUrl, ['retained', 'a/#/b', '--login', OPS.user]);
  t.equal(badFilter.code, 1);
  t.match(badFilter.stderr, /filter/);

  const noCredentials = await ctl(t, cwd, httpUrl, ['status'], {});
  t.equal(noCredentials.code, 77, 'no credentials: refused');
  t.match(noCredentials.stderrLines, [/authentication required.*--login/]);
  const wrong = await ctl(t, cwd, httpUrl, ['status', '--login', OPS.user], { EDGEMQTT_CTL_PASSWORD: 'wrong' });
  t.equal(wrong.code, 77);
  const notAdmin = await ctl(t, cwd, httpUrl, ['status', '--login', 'sensor'], { EDGEMQTT_CTL_PASSWORD: 'sensor-secret' });
  t.equal(notAdmin.code, 77, 'a user not in admin.users: 403');
  const passwordFile = path.join(cwd, 'ops-password');
  await writeFile(passwordFile, `${OPS.password}\n`);
  t.equal((await ctl(t, cwd, httpUrl, ['status', '--login', OPS.user, '--password-file', passwordFile], {})).code, 0, '--password-file works');

  // A port nothing listens on: bound, then closed again.
  const server = net.createServer();
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', () => resolve()));
  const { port } = server.address() as net.AddressInfo;
  await new Promise<void>((resolve) => server.close(() => resolve()));
  const unreachable = await ctl(t, cwd, `http://127.0.0.1:${port}/`, ['status', '--login', OPS.user]);
  t.equal(unreachable.code, 69);
  t.match(unreachable.stderrLines, [/^edgemqtt ctl: cannot reach the daemon at http:\/\/127\.0\.0\.1:\d+: ECONNREFUSED$/]);
});

t.test('ctl reload against `edgemqtt start`: the config file is read again, as on SIGHUP; the URL comes from it', async (t) => {
  const files = await adminFiles(t);
  const dir = files.dir;
  const config = (level: string) => ({
    dataDir: path.join(dir, 'data'),
    log: { level },
    mqtt: { host: '127.0.0.1', port: 0 },
    http: { host: '127.0.0.1', port: 0 },
    auth: { passwordFile: files.passwordFile },
    admin: { enabled: true, tokenFile: files.tokenFile },
  });
  const configPath = path.join(dir, 'edgemqtt.yaml');
  await writeFile(configPath, stringify(config('info')));
  const daemon = new CliProcess(t, ['start', '--config', configPath], { cwd: dir });
  const ready = await daemon.waitForLog('edgemqtt ready');
  const httpPort = (ready.addresses as { http: { port: number } }).http.port;

  await writeFile(configPath, stringify(config('debug')));
  // No --url: the HTTP listener of the config (its port given, as the file asks for port 0).
  const reload = await execCli(t, ['ctl', 'reload', '--config', configPath, '--http-port', String(httpPort), '--token-file', files.tokenFile], { cwd: dir });
  t.equal(reload.code, 0, reload.stderr);
  t.match(reload.stdout, /^applied: .*log\.level/m, 'the changed log level, read from the file, is applied');
  t.match(reload.stdout, /^needs a restart: -$/m);
  await writeFile(configPath, stringify({ ...config('debug'), mqtt: { port: 'not a port' } }));
  const refused = await execCli(t, ['ctl', 'reload', '--url', `http://127.0.0.1:${httpPort}/`, '--token-file', files.tokenFile], { cwd: dir });
  t.equal(refused.code, 1, 'an invalid file: refused');
  t.match(refused.stderrLines, [/^edgemqtt ctl: invalid configuration: nothing was reloaded: mqtt\.port/]);
  await daemon.waitForLog('reload refused: keeping the running configuration');

  const logged = await daemon.waitForLog('admin API call', { predicate: (line) => line.path === '/api/v1/reload' });
  t.match(logged, { who: 'token', method: 'POST', status: 200 });
  t.notOk(JSON.stringify(daemon.logs.items).includes(TOKEN), 'the token is never logged');
  daemon.signal('SIGTERM');
  t.equal((await daemon.waitForExit()).code, 0);
});
