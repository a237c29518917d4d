/**
 * A Debian 12 guest with systemd as PID 1, for tests of the Debian package:
 * `systemd-nspawn --boot` on the root that scripts/debian/guest-root.sh
 * builds once (debootstrap) and caches. Each guest boots with
 * --volatile=overlay, so the cached root is never changed: everything a test
 * does lands in a tmpfs that goes with the guest. --private-network gives
 * the guest its own loopback, so its ports (1883, 8080) never meet the
 * host's tests. Commands run inside with nsenter, which needs no systemd on
 * the host (machinectl would).
 */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { createWriteStream, existsSync, readFileSync } from 'node:fs';
import { chmod, copyFile, mkdir, writeFile } from 'node:fs/promises';
import path from 'node:path';
import type { Test } from 'tap';
import { repoRoot } from './process.js';

export const GUEST_CACHE = process.env.EDGEMQTT_GUEST_CACHE ?? '/var/cache/edgemqtt-test';
const GUEST_ROOT_SCRIPT = path.join(repoRoot, 'scripts', 'debian', 'guest-root.sh');
const GUEST_PATH = '/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin';

const hasCommand = (command: string, args = ['--version']) => spawnSync(command, args, { stdio: 'ignore' }).error === undefined;

/** Why a guest cannot run on this machine, or false when it can (the root may still need building). */
export function guestUnavailable(): string | false {
  if (process.getuid?.() !== 0) return 'systemd-nspawn needs root: run the test as root';
  for (const [command, pkg] of [
    ['systemd-nspawn', 'systemd-container'],
    ['nsenter', 'util-linux'],
    ['setpriv', 'util-linux'],
    ['flock', 'util-linux'],
    ['dpkg-deb', 'dpkg'],
  ] as const) {
    if (!hasCommand(command)) return `${command} is not installed (Debian: apt install ${pkg})`;
  }
  if (!existsSync('/sys/fs/cgroup')) return 'no /sys/fs/cgroup: systemd cannot run as PID 1 in a guest here';
  return false;
}

/**
 * The cached guest root, built on first use (about a minute; needs the
 * Debian mirror). Returns the path, or the reason it cannot be had.
 */
export function guestRoot(): { root: string } | { error: string } {
  const result = spawnSync(GUEST_ROOT_SCRIPT, [GUEST_CACHE], { encoding: 'utf8', timeout: 15 * 60_000 });
  if (result.status === 0) return { root: result.stdout.trim().split('\n').at(-1)! };
  if (!hasCommand('debootstrap')) return { error: 'no cached guest root and debootstrap is not installed (Debian: apt install debootstrap)' };
  return { error: `no guest root: scripts/debian/guest-root.sh failed: ${(result.stderr || String(result.error)).trim()}` };
}

/**
 * A local `nodejs` package holding this machine's node binary, so that the
 * guest satisfies `Depends: nodejs (>= 20)` (Debian 12's own nodejs is 18).
 */
export async function hostNodeDeb(dir: string): Promise<string> {
  const stage = path.join(dir, 'nodejs-stage');
  await mkdir(path.join(stage, 'usr', 'bin'), { recursive: true });
  await mkdir(path.join(stage, 'DEBIAN'));
  await copyFile(process.execPath, path.join(stage, 'usr', 'bin', 'node'));
  await chmod(path.join(stage, 'usr', 'bin', 'node'), 0o755);
  const arch = spawnSync('dpkg', ['--print-architecture'], { encoding: 'utf8' }).stdout.trim();
  await writeFile(
    path.join(stage, 'DEBIAN', 'control'),
    [
      'Package: nodejs',
      `Version: ${process.versions.node}-0local`,
      `Architecture: ${arch}`,
      'Maintainer: edgemqtt tests <root@localhost>',
      'Depends: libc6, libstdc++6',
      'Description: the Node.js binary of the machine that runs the tests',
      '',
    ].join('\n'),
  );
  const deb = path.join(dir, 'nodejs-host.deb');
  // No compression: the binary is ~100 MB and is unpacked once, next door.
  const built = spawnSync('dpkg-deb', ['-Znone', '--root-owner-group', '--build', stage, deb], { encoding: 'utf8' });
  if (built.status !== 0) throw new Error(`dpkg-deb --build (node) failed: ${built.stderr}`);
  return deb;
}

export interface GuestResult {
  code: number | null;
  stdout: string;
  stderr: string;
}

export class Guest {
  private readonly child: ChildProcess;
  private leader = 0;
  private exited = false;
  readonly logPath: string;

  private constructor(t: Test, root: string, readonly name: string, share: string, dir: string) {
    this.logPath = path.join(dir, 'nspawn.log');
    const log = createWriteStream(this.logPath);
    this.child = spawn(
      // setpriv execs systemd-nspawn with a parent-death signal: if the test
      // process dies, however (a timeout's SIGKILL included), nspawn gets
      // SIGTERM and powers the guest off. SIGKILL to nspawn would leave the
      // guest's systemd running.
      'setpriv',
      [
        '--pdeathsig=SIGTERM',
        'systemd-nspawn',
        '--quiet',
        `--directory=${root}`,
        `--machine=${name}`,
        '--boot',
        '--volatile=overlay',
        '--private-network',
        // No systemd-machined or scope unit on the host: nspawn stays in
        // the test's own cgroup and needs no D-Bus.
        '--register=no',
        '--keep-unit',
        `--bind-ro=${share}:/mnt/edgemqtt`,
        '--console=pipe',
      ],
      { stdio: ['ignore', 'pipe', 'pipe'] },
    );
    this.child.stdout!.pipe(log);
    this.child.stderr!.pipe(log);
    this.child.once('exit', () => (this.exited = true));
    // A test process that exits without its teardown must not leave a
    // guest behind (the parent-death signal above covers a killed one).
    const killOnExit = () => this.kill();
    process.once('exit', killOnExit);
    t.teardown(async () => {
      process.removeListener('exit', killOnExit);
      if (!t.passing() && this.leader && !this.exited) {
        const journal = await this.run('journalctl --no-pager -n 80').catch((error: Error) => ({ stdout: error.message }));
        t.comment(`the guest's journal, last lines:\n${journal.stdout}`);
      }
      await this.stop();
    });
  }

  /** Boots a guest and waits until its systemd finished starting up. */
  static async boot(t: Test, root: string, share: string, dir: string): Promise<Guest> {
    const guest = new Guest(t, root, `edgemqtt-test-${process.pid}`, share, dir);
    const deadline = Date.now() + 60_000;
    while (!guest.leader) {
      if (guest.exited || Date.now() > deadline) throw new Error(`systemd-nspawn did not start a guest:\n${guest.logTail()}`);
      guest.leader = guest.findLeader();
      if (!guest.leader) await delay(100);
    }
    // `--wait` returns once start-up is over; systemctl fails until the
    // guest's systemd listens, so poll that part.
    for (;;) {
      const state = await guest.run('systemctl is-system-running --wait', { timeoutMs: 60_000 });
      const text = state.stdout.trim();
      if (text === 'running' || text === 'degraded') break;
      if (guest.exited || Date.now() > deadline) throw new Error(`the guest did not finish booting (${text || state.stderr.trim()}):\n${guest.logTail()}`);
      await delay(200);
    }
    return guest;
  }

  /** The guest's PID 1, as the host sees it: systemd-nspawn's child. */
  private findLeader(): number {
    const pid = this.child.pid!;
    try {
      const children = readFileSync(`/proc/${pid}/task/${pid}/children`, 'utf8').trim().split(/\s+/).filter(Boolean).map(Number);
      return children.find((child) => readFileSync(`/proc/${child}/comm`, 'utf8').trim() === 'systemd') ?? 0;
    } catch {
      return 0;
    }
  }

  /** Runs `sh -c command` inside the guest as root, with a clean environment. */
  run(command: string, options: { timeoutMs?: number; input?: string } = {}): Promise<GuestResult> {
    return new Promise((resolve, reject) => {
      const child = spawn(
        'nsenter',
        [`--target=${this.leader}`, '--all', '--root', '--wd', '--', '/usr/bin/env', '-i', `PATH=${GUEST_PATH}`, 'HOME=/root', 'LANG=C.UTF-8', 'DEBIAN_FRONTEND=noninteractive', '/bin/sh', '-c', command],
        { stdio: [options.input === undefined ? 'ignore' : 'pipe', 'pipe', 'pipe'] },
      );
      if (options.input !== undefined) {
        // A command that exits without reading its input must not fail the test with EPIPE.
        child.stdin!.on('error', () => {});
        child.stdin!.end(options.input);
      }
      let stdout = '';
      let stderr = '';
      child.stdout!.setEncoding('utf8').on('data', (chunk: string) => (stdout += chunk));
      child.stderr!.setEncoding('utf8').on('data', (chunk: string) => (stderr += chunk));
      const timer = setTimeout(() => {
        child.kill('SIGKILL');
        reject(new Error(`guest command timed out after ${options.timeoutMs ?? 60_000} ms: ${command}\n${stdout}${stderr}`));
      }, options.timeoutMs ?? 60_000);
      child.on('error', reject);
      child.on('close', (code) => {
        clearTimeout(timer);
        resolve({ code, stdout, stderr });
      });
    });
  }

  /** Runs a command that must succeed, and returns its stdout. */
  async ok(command: string, options: { timeoutMs?: number; input?: string } = {}): Promise<string> {
    const result = await this.run(command, options);
    if (result.code !== 0) throw new Error(`guest command failed (${result.code}): ${command}\n${result.stdout}${result.stderr}`);
    return result.stdout;
  }

  /** `systemctl show` properties of a unit, as a map. */
  async show(unit: string, properties: string[]): Promise<Record<string, string>> {
    const text = await this.ok(`systemctl show ${unit} --property=${properties.join(',')}`);
    return Object.fromEntries(text.trim().split('\n').map((line) => [line.slice(0, line.indexOf('=')), line.slice(line.indexOf('=') + 1)]));
  }

  logTail(lines = 30): string {
    try {
      return readFileSync(this.logPath, 'utf8').split('\n').slice(-lines).join('\n');
    } catch {
      return '(no nspawn log)';
    }
  }

  /** Halts the guest (SIGTERM makes nspawn ask the guest's systemd to power off), SIGKILL after 30 s. */
  async stop(): Promise<void> {
    if (this.exited) return;
    const exited = new Promise<void>((resolve) => this.child.once('exit', () => resolve()));
    this.child.kill('SIGTERM');
    const timer = setTimeout(() => this.kill(), 30_000);
    await exited;
    clearTimeout(timer);
  }

  /**
   * SIGKILL to the guest's PID 1 ends every process of its PID namespace;
   * SIGKILL to systemd-nspawn alone would leave the guest running.
   */
  private kill(): void {
    if (this.exited) return;
    if (this.leader) {
      try {
        process.kill(this.leader, 'SIGKILL');
      } catch {
        // already gone
      }
    }
    this.child.kill('SIGKILL');
  }
}

const delay = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));
