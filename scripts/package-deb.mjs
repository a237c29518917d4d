#!/usr/bin/env node
/**
 * `npm run package`: builds edgemqtt_<version>_all.deb from this checkout.
 *
 * Usage: node scripts/package-deb.mjs [--out DIR] [--version VERSION] [--compression xz|gzip|none]
 *
 * Needs dist/ built (`npm run package` builds first), node_modules from
 * `npm ci`, and dpkg-deb. No network: the production dependencies are copied
 * from node_modules, chosen by package-lock.json (every package not marked
 * `dev`, as `npm ci --omit=dev` would install), instead of installing them a
 * second time.
 *
 * Layout (docs/systemd.md lists it too; systemd/edgemqtt.service runs it):
 *   /usr/lib/edgemqtt/{dist,web,config,package.json,node_modules}
 *   /usr/bin/edgemqtt -> ../lib/edgemqtt/dist/bin/edgemqtt.js
 *   /lib/systemd/system/edgemqtt.service
 *   /usr/lib/sysusers.d/edgemqtt.conf
 *   /etc/edgemqtt/edgemqtt.yaml   (conffile; root:edgemqtt 0640 set by postinst)
 *
 * The package is Architecture: all. The only native code is LevelDB
 * (classic-level), which ships prebuilt binaries for linux x64, arm64 and
 * armv6/armv7 in its npm tarball; the other platforms' prebuilds are left
 * out. msgpackr-extract (an optional accelerator of msgpackr) is included
 * with the prebuild npm installed for the build machine only; on the other
 * CPUs msgpackr uses its JavaScript decoder, with the same results.
 *
 * `--version` overrides the version, in the package and in the package.json
 * it installs (test/package.test.ts builds "the next version" with it).
 */
import { spawnSync } from 'node:child_process';
import { chmodSync, cpSync, existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync, symlinkSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';

const root = fileURLToPath(new URL('..', import.meta.url));
const debianDir = path.join(root, 'scripts', 'debian');
const { values } = parseArgs({ options: { out: { type: 'string' }, version: { type: 'string' }, compression: { type: 'string' } } });
const manifest = JSON.parse(readFileSync(path.join(root, 'package.json'), 'utf8'));

/** Debian sorts `~` before anything, so 1.0.0~beta.1 < 1.0.0 as in semver. */
const debianVersion = values.version ?? manifest.version.replace('-', '~');
/** The version the daemon reports ($SYS/broker/version, the admin API). */
const runtimeVersion = values.version ? values.version.replace('~', '-') : manifest.version;
const outDir = path.resolve(values.out ?? root);
const debName = `edgemqtt_${debianVersion}_all.deb`;

function fail(message) {
  console.error(`package-deb: ${message}`);
  process.exit(1);
}

if (!existsSync(path.join(root, 'dist', 'bin', 'edgemqtt.js'))) fail('dist/ holds no build: run `npm run build` first');
if (spawnSync('dpkg-deb', ['--version'], { stdio: 'ignore' }).error) fail('dpkg-deb is not installed (Debian: apt install dpkg)');

const stage = mkdtempSync(path.join(os.tmpdir(), 'edgemqtt-deb-'));
try {
  const lib = path.join(stage, 'usr', 'lib', 'edgemqtt');
  mkdirSync(lib, { recursive: true });
  for (const item of ['dist', 'web', 'config']) cpSync(path.join(root, item), path.join(lib, item), { recursive: true });
  writeFileSync(path.join(lib, 'package.json'), `${JSON.stringify(runtimeManifest(), null, 2)}\n`);
  const copied = copyProductionModules(path.join(lib, 'node_modules'));
  chmodSync(path.join(lib, 'dist', 'bin', 'edgemqtt.js'), 0o755);

  mkdirSync(path.join(stage, 'usr', 'bin'), { recursive: true });
  symlinkSync('../lib/edgemqtt/dist/bin/edgemqtt.js', path.join(stage, 'usr', 'bin', 'edgemqtt'));
  install(path.join(root, 'systemd', 'edgemqtt.service'), path.join(stage, 'lib', 'systemd', 'system', 'edgemqtt.service'), 0o644);
  install(path.join(debianDir, 'edgemqtt.sysusers'), path.join(stage, 'usr', 'lib', 'sysusers.d', 'edgemqtt.conf'), 0o644);
  // 0640 in the archive too, so the file is never world-readable, not even
  // between unpack and the postinst that gives it the edgemqtt group.
  install(path.join(root, 'config', 'edgemqtt.yaml'), path.join(stage, 'etc', 'edgemqtt', 'edgemqtt.yaml'), 0o640);
  install(path.join(debianDir, 'copyright'), path.join(stage, 'usr', 'share', 'doc', 'edgemqtt', 'copyright'), 0o644);

  const control = path.join(stage, 'DEBIAN');
  mkdirSync(control);
  for (const script of ['postinst', 'prerm', 'postrm']) install(path.join(debianDir, script), path.join(control, script), 0o755);
  writeFileSync(path.join(control, 'conffiles'), '/etc/edgemqtt/edgemqtt.yaml\n');
  writeFileSync(path.join(control, 'control'), controlFile(installedSizeKiB(stage)));

  mkdirSync(outDir, { recursive: true });
  const target = path.join(outDir, debName);
  // xz by default, as Debian's own packages; every dpkg unpacks it.
  const compression = values.compression ?? 'xz';
  const built = spawnSync('dpkg-deb', [`-Z${compression}`, '--root-owner-group', '--build', stage, target], { stdio: ['ignore', 'ignore', 'inherit'] });
  if (built.status !== 0) fail(`dpkg-deb --build failed (${built.status ?? built.signal})`);
  const size = statSync(target).size;
  console.log(`${target} (${(size / 1024 / 1024).toFixed(1)} MiB, ${copied} production packages)`);
} finally {
  rmSync(stage, { recursive: true, force: true });
}

/** What the installed code reads of package.json: its name, version and module type. */
function runtimeManifest() {
  const { name, description, license, type, main, exports, bin, engines, dependencies } = manifest;
  return { name, version: runtimeVersion, description, license, type, main, exports, bin, engines, dependencies };
}

/**
 * Copies node_modules/<pkg> for every production package of the lockfile
 * (not `dev`; `optional` ones only when npm installed them for this machine).
 * Returns how many were copied.
 */
function copyProductionModules(target) {
  const lock = JSON.parse(readFileSync(path.join(root, 'package-lock.json'), 'utf8'));
  let count = 0;
  for (const [key, entry] of Object.entries(lock.packages)) {
    if (!key.startsWith('node_modules/') || entry.dev) continue;
    const source = path.join(root, key);
    if (!existsSync(source)) {
      if (entry.optional) continue; // another platform's optional prebuild
      fail(`${key} is a production dependency but is not installed: run \`npm ci\``);
    }
    const destination = path.join(target, key.slice('node_modules/'.length));
    cpSync(source, destination, {
      recursive: true,
      // Nested node_modules are entries of their own in the lockfile.
      filter: (from) => !path.relative(source, from).split(path.sep).includes('node_modules'),
    });
    count++;
  }
  const prebuilds = path.join(target, 'classic-level', 'prebuilds');
  if (!existsSync(prebuilds)) fail('classic-level has no prebuilds directory');
  for (const platform of ['linux-x64', 'linux-arm64', 'linux-arm']) {
    if (!existsSync(path.join(prebuilds, platform))) fail(`classic-level has no ${platform} prebuild`);
  }
  for (const platform of readdirSync(prebuilds)) {
    if (!platform.startsWith('linux-')) rmSync(path.join(prebuilds, platform), { recursive: true });
  }
  return count;
}

function install(source, destination, mode) {
  mkdirSync(path.dirname(destination), { recursive: true });
  cpSync(source, destination);
  chmodSync(destination, mode);
}

function installedSizeKiB(dir) {
  const result = spawnSync('du', ['-sk', '--exclude=DEBIAN', dir], { encoding: 'utf8' });
  return Number(result.stdout.split('\t')[0]);
}

function controlFile(sizeKiB) {
  return [
    'Package: edgemqtt',
    `Version: ${debianVersion}`,
    'Architecture: all',
    'Maintainer: edgemqtt maintainers <edgemqtt@localhost>',
    `Installed-Size: ${sizeKiB}`,
    // The unit runs /usr/bin/node; Debian 12's own nodejs is 18 (see docs/systemd.md).
    // passwd: useradd/userdel, where systemd-sysusers is missing and on purge.
    // procps: /bin/kill, which the unit's ExecReload= runs (a minimal Debian
    // has none, and `systemctl reload` then fails with 203/EXEC).
    'Depends: nodejs (>= 20), passwd, procps',
    'Recommends: systemd',
    'Section: net',
    'Priority: optional',
    `Description: ${manifest.description.split(':')[0]}`,
    ' edgemqtt serves MQTT 3.1.1 and 5.0 clients over TCP, TLS and WebSocket,',
    ' keeps durable sessions and retained messages in LevelDB, and can bridge',
    ' topics to NATS JetStream.',
    ' .',
    ' This package runs it as the edgemqtt systemd service, with its state in',
    ' /var/lib/edgemqtt and its configuration in /etc/edgemqtt/edgemqtt.yaml.',
    '',
  ].join('\n');
}
