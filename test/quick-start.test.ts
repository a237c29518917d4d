/**
 * The quick start and the gateway install as a newcomer meets them: `npm
 * start` runs the built code, with only the production dependencies that
 * `npm ci --omit=dev` installs, reads `config/edgemqtt.yaml` (so editing it
 * changes what runs), and stops on SIGTERM; `prepare` builds where
 * TypeScript is and accepts the build it finds where it is not.
 */
import { execFile, spawn } from 'node:child_process';
import { cpSync, mkdirSync, mkdtempSync, readFileSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import os from 'node:os';
import path from 'node:path';
import { createInterface } from 'node:readline';
import { promisify } from 'node:util';
import t, { type Test } from 'tap';
import { parseDocument } from 'yaml';
import {
  assertBuilt,
  childEnv,
  EXIT_TIMEOUT_MS,
  parseLogLine,
  Recorder,
  repoRoot,
  staleBuildNote,
  type LogLine,
} from './helpers/process.js';

assertBuilt();
const stale = staleBuildNote();
if (stale) t.comment(`warning: ${stale}`);

const run = promisify(execFile);
const packageJson = JSON.parse(readFileSync(path.join(repoRoot, 'package.json'), 'utf8')) as { scripts: Record<string, string>; files: string[] };

/**
 * A gateway install: what docs/systemd.md copies (package files, dist,
 * config, the prepare script) and a node_modules holding only the production
 * tree of package-lock.json, each package linked to the checkout's copy.
 * Outside the checkout, so nothing resolves through its node_modules.
 */
async function productionInstall(t: Test, withDist = true): Promise<string> {
  const dir = mkdtempSync(path.join(os.tmpdir(), 'edgemqtt-prod-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  // What the package ships (its `files`), as an install directory holds it.
  const shipped = packageJson.files.filter((entry) => withDist || entry !== 'dist');
  for (const entry of ['package.json', 'package-lock.json', ...shipped]) {
    cpSync(path.join(repoRoot, entry), path.join(dir, entry), { recursive: true });
  }
  // From the lockfile: the tree `npm ci --omit=dev` installs, whatever else the checkout holds.
  const { stdout } = await run('npm', ['ls', '--omit=dev', '--all', '--parseable', '--package-lock-only'], {
    cwd: repoRoot,
    env: childEnv(),
  });
  const topLevel = stdout
    .split('\n')
    .map((line) => path.relative(repoRoot, line.trim()))
    .filter((relative) => /^node_modules\/(@[^/]+\/)?[^/@]+$/.test(relative));
  for (const relative of topLevel) {
    mkdirSync(path.dirname(path.join(dir, relative)), { recursive: true });
    symlinkSync(path.join(repoRoot, relative), path.join(dir, relative), 'dir');
  }
  const names = topLevel.map((relative) => relative.slice('node_modules/'.length));
  t.ok(names.includes('aedes') && names.includes('level'), 'the production tree holds the runtime dependencies');
  t.notOk(names.includes('typescript') || names.includes('tap') || names.includes('playwright-core'), 'and no dev dependency');
  t.throws(() => createRequire(path.join(dir, 'package.json')).resolve('typescript'), 'TypeScript cannot be resolved there');
  return dir;
}

t.test('npm start runs the built code with production dependencies only, reads config/edgemqtt.yaml, and stops on SIGTERM', async (t) => {
  t.notMatch(packageJson.scripts.start, /build|tsc/, 'start does not build');
  t.match(packageJson.scripts.start, /--config config\/edgemqtt\.yaml/, 'start names the example config');
  t.match(packageJson.scripts.test, /^npm run build && /, 'npm test still builds first');
  const dir = await productionInstall(t);

  // What a newcomer does: edit the file the README points at. If start did
  // not read it, the daemon would bind 0.0.0.0:1883 and 8080.
  const configFile = path.join(dir, 'config', 'edgemqtt.yaml');
  const document = parseDocument(readFileSync(configFile, 'utf8'));
  for (const section of ['mqtt', 'http']) {
    document.setIn([section, 'host'], '127.0.0.1');
    document.setIn([section, 'port'], 0);
  }
  writeFileSync(configFile, document.toString());

  // `npm start` runs its script with `sh -c`; exec keeps signals and the exit code the daemon's own.
  const child = spawn('/bin/sh', ['-c', `exec ${packageJson.scripts.start}`], {
    cwd: dir,
    env: childEnv(),
    stdio: ['ignore', 'pipe', 'pipe'],
    detached: true,
  });
  const logs = new Recorder<LogLine>((lines) => lines.map((line) => JSON.stringify(line)).join('\n'));
  let stderr = '';
  child.stderr.setEncoding('utf8').on('data', (text: string) => (stderr += text));
  createInterface({ input: child.stdout, crlfDelay: Infinity }).on('line', (line) => {
    const parsed = parseLogLine(line);
    if (parsed) logs.push(parsed);
  });
  const exited = new Promise<number | null>((resolve) =>
    child.once('close', (code) => {
      logs.close(`the daemon exited (code ${code}); stderr: ${stderr.trim() || '(empty)'}`);
      resolve(code);
    }),
  );
  t.teardown(async () => {
    try {
      process.kill(-child.pid!, 'SIGKILL');
    } catch {
      // Already gone.
    }
    await exited;
  });

  const { item: read } = await logs.waitFor((line) => line.msg === 'config file read', 'the config file log line');
  t.equal(read.file, configFile, 'start says which file it read, by its full path');
  const { item: ready } = await logs.waitFor((line) => line.msg === 'edgemqtt ready', 'the ready log line');
  const addresses = ready.addresses as Record<string, { address: string; port: number }>;
  t.equal(addresses.mqtt?.address, '127.0.0.1', 'the edited mqtt.host is in force');
  t.not(addresses.mqtt?.port, 1883, 'and the edited mqtt.port');
  t.equal(addresses.http?.address, '127.0.0.1', 'and http.host');

  child.kill('SIGTERM');
  let timer: NodeJS.Timeout | undefined;
  const code = await Promise.race([
    exited,
    new Promise<never>((_, reject) => {
      timer = setTimeout(() => reject(new Error(`no exit within ${EXIT_TIMEOUT_MS} ms of SIGTERM; stderr: ${stderr}`)), EXIT_TIMEOUT_MS);
    }),
  ]).finally(() => clearTimeout(timer));
  t.equal(code, 0, 'exit 0');
  t.ok(logs.items.some((line) => line.msg === 'stop requested' && line.signal === 'SIGTERM'), 'the stop was the SIGTERM');
  t.equal(stderr, '', 'nothing on stderr');
});

t.test('prepare accepts the build in dist/ where TypeScript is not installed, and fails clearly without one', async (t) => {
  t.equal(packageJson.scripts.prepare, 'node scripts/prepare.mjs', 'npm ci runs scripts/prepare.mjs');
  const [withDist, withoutDist] = await Promise.all([productionInstall(t), productionInstall(t, false)]);

  const ok = await run('npm', ['run', '--silent', 'prepare'], { cwd: withDist, env: childEnv() });
  t.match(ok.stdout, /TypeScript is not installed .*using the build already in dist\//, 'says which build it uses');

  const failed = await run('npm', ['run', '--silent', 'prepare'], { cwd: withoutDist, env: childEnv() }).then(
    () => undefined,
    (error: unknown) => error as { code: number; stderr: string },
  );
  t.ok(failed, 'fails without a build');
  t.equal(failed?.code, 1, 'exit 1, so npm ci stops');
  t.match(failed?.stderr ?? '', /dist\/ holds no build and TypeScript is not installed/, 'and says why');
});

t.test('`npx --no edgemqtt`, as the docs write it, runs the CLI of an install directory', async (t) => {
  const dir = await productionInstall(t);
  const passwordFile = path.join(dir, 'passwd');
  // A user line in the file's format, so `list` has something to print.
  writeFileSync(passwordFile, `sensor-17:$scrypt$N=16384,r=8,p=1$${'A'.repeat(22)}$${'B'.repeat(86)}\n`);
  const { stdout } = await run('npx', ['--no', 'edgemqtt', 'passwd', 'list', passwordFile], { cwd: dir, env: childEnv() });
  t.equal(stdout, 'sensor-17\n', 'lists the user');
});
