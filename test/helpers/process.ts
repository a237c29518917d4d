/**
 * Runs the built CLI (`dist/bin/edgemqtt.js`) as a real child process, and
 * stands in for systemd's notify socket, so tests see exactly what a service
 * manager and an operator see: exit codes, stderr, JSON log lines, sd_notify
 * datagrams. Every wait is bounded and every child is killed in teardown.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync, readdirSync, statSync } from 'node:fs';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import type { Test } from 'tap';
import { stringify } from 'yaml';

export const repoRoot = fileURLToPath(new URL('../../', import.meta.url));
export const cliPath = path.join(repoRoot, 'dist', 'bin', 'edgemqtt.js');
export const fixturesDir = path.join(repoRoot, 'test', 'fixtures');

/** Generous upper bounds for a loaded 2-core machine; waits end as soon as their condition holds. */
export const START_TIMEOUT_MS = 20_000;
export const EXIT_TIMEOUT_MS = 15_000;

/** Fails early, with the fix, when the CLI has not been built. */
export function assertBuilt(): void {
  if (!existsSync(cliPath)) throw new Error(`${cliPath} is missing: run \`npm run build\` first`);
}

/** Names a source file newer than the built CLI (a stale build), if there is one. */
export function staleBuildNote(): string | undefined {
  const built = statSync(cliPath).mtimeMs;
  const src = path.join(repoRoot, 'src');
  const newer = readdirSync(src, { recursive: true, encoding: 'utf8' }).find(
    (file) => file.endsWith('.ts') && statSync(path.join(src, file)).mtimeMs > built,
  );
  return newer ? `src/${newer} is newer than dist/: run \`npm run build\`` : undefined;
}

/**
 * The environment for a child: PATH and HOME only, plus `extra`. Nothing of
 * the test runner's own environment (EDGEMQTT_*, NOTIFY_SOCKET,
 * JOURNAL_STREAM, WATCHDOG_* when tests run under systemd) leaks in.
 */
export function childEnv(extra: Record<string, string | undefined> = {}): Record<string, string> {
  const env: Record<string, string> = { PATH: process.env.PATH ?? '/usr/bin:/bin' };
  if (process.env.HOME) env.HOME = process.env.HOME;
  for (const [name, value] of Object.entries(extra)) if (value !== undefined) env[name] = value;
  return env;
}

/** Writes `config` as YAML to `dir/name` and returns the path. */
export async function writeConfig(dir: string, config: unknown, name = 'edgemqtt.yaml'): Promise<string> {
  const file = path.join(dir, name);
  await writeFile(file, typeof config === 'string' ? config : stringify(config));
  return file;
}

/** One pino line from the daemon's stdout. */
export interface LogLine {
  /** The level's name: 'info', 'warn', ... */
  level: string;
  msg?: string;
  /** The `<N>` syslog priority prefix, when the line had one (journald mode). */
  priority?: number;
  [key: string]: unknown;
}

/** Parses one stdout line: optional `<N>` prefix, then pino JSON. Returns undefined for non-JSON text. */
export function parseLogLine(line: string): LogLine | undefined {
  const match = /^<([0-7])>(.*)$/s.exec(line);
  const json = match ? match[2]! : line;
  try {
    const value: unknown = JSON.parse(json);
    if (value === null || typeof value !== 'object' || typeof (value as LogLine).level !== 'string') return undefined;
    return match ? { ...(value as LogLine), priority: Number(match[1]) } : (value as LogLine);
  } catch {
    return undefined;
  }
}

export interface WaitOptions {
  timeoutMs?: number;
  /** Only items at this index or later match. */
  from?: number;
}

/**
 * A growing list of events (log lines, notify messages) that tests wait on.
 * Once closed (the producer exited) a wait that cannot be met fails at once,
 * saying why, instead of running into its time-out.
 */
export class Recorder<T> {
  readonly items: T[] = [];
  readonly #waiters = new Set<() => void>();
  #closedBecause: string | undefined;

  constructor(readonly describe: (items: T[]) => string) {}

  push(item: T): void {
    this.items.push(item);
    for (const wake of [...this.#waiters]) wake();
  }

  close(reason: string): void {
    this.#closedBecause = reason;
    for (const wake of [...this.#waiters]) wake();
  }

  /** Index of the first item at or after `from` that matches, or -1. */
  findIndex(predicate: (item: T) => boolean, from = 0): number {
    for (let index = from; index < this.items.length; index++) if (predicate(this.items[index]!)) return index;
    return -1;
  }

  waitFor(predicate: (item: T) => boolean, what: string, options: WaitOptions = {}): Promise<{ item: T; index: number }> {
    const { timeoutMs = START_TIMEOUT_MS, from = 0 } = options;
    return new Promise((resolve, reject) => {
      const fail = (why: string) => {
        clearTimeout(timer);
        this.#waiters.delete(check);
        reject(new Error(`${why} while waiting for ${what}; so far:\n${this.describe(this.items)}`));
      };
      const check = () => {
        const index = this.findIndex(predicate, from);
        if (index >= 0) {
          clearTimeout(timer);
          this.#waiters.delete(check);
          resolve({ item: this.items[index]!, index });
        } else if (this.#closedBecause !== undefined) {
          fail(this.#closedBecause);
        }
      };
      const timer = setTimeout(() => fail(`timed out after ${timeoutMs} ms`), timeoutMs);
      this.#waiters.add(check);
      check();
    });
  }
}

export interface ExitStatus {
  code: number | null;
  signal: NodeJS.Signals | null;
}

export interface CliSpawnOptions {
  cwd: string;
  /** Extra environment on top of childEnv(). */
  env?: Record<string, string | undefined>;
  /** Arguments for node before the script, e.g. `['--import', fault]`. */
  nodeArgs?: string[];
  /** A command the CLI runs under, e.g. `['strace', '-f', ...]`. */
  wrapper?: string[];
  /** Send stdout to this file descriptor instead of a pipe (then `logs` stays empty). */
  stdoutFd?: number;
}

/** A running `edgemqtt` process. */
export class CliProcess {
  readonly child: ChildProcess;
  readonly logs = new Recorder<LogLine>((lines) => lines.map((line) => JSON.stringify(line)).join('\n'));
  /** stdout lines that are not JSON log lines (there should be none). */
  readonly strayStdout: string[] = [];
  stdout = '';
  stderr = '';
  /** Set once the process has exited. */
  exitStatus: ExitStatus | undefined;
  readonly exited: Promise<ExitStatus>;

  constructor(t: Test, args: string[], options: CliSpawnOptions) {
    assertBuilt();
    const argv = [...(options.wrapper ?? []), process.execPath, ...(options.nodeArgs ?? []), cliPath, ...args];
    this.child = spawn(argv[0]!, argv.slice(1), {
      cwd: options.cwd,
      env: childEnv(options.env),
      stdio: ['ignore', options.stdoutFd ?? 'pipe', 'pipe'],
      // Its own process group, so teardown can end it together with whatever
      // it started (systemd-notify children; node under a wrapper).
      detached: true,
    });
    if (this.child.stdout) {
      this.child.stdout.setEncoding('utf8').on('data', (text: string) => (this.stdout += text));
      createInterface({ input: this.child.stdout, crlfDelay: Infinity }).on('line', (line) => {
        const parsed = parseLogLine(line);
        if (parsed) this.logs.push(parsed);
        else this.strayStdout.push(line);
      });
    }
    this.child.stderr!.setEncoding('utf8').on('data', (text: string) => (this.stderr += text));
    this.exited = new Promise((resolve, reject) => {
      this.child.once('error', reject);
      // 'close' waits for stdout/stderr to end, so every line has been read.
      this.child.once('close', (code, signal) => {
        this.exitStatus = { code, signal };
        this.logs.close(`edgemqtt exited (code ${code}, signal ${signal}); stderr: ${this.stderr.trim() || '(empty)'}`);
        resolve(this.exitStatus);
      });
    });
    this.exited.catch(() => {});
    t.teardown(async () => {
      // The group outlives its leader while any member lives, and Linux does
      // not reuse a PID that is still a group ID: this reaches only our processes.
      const pid = this.child.pid;
      if (pid !== undefined) {
        try {
          process.kill(-pid, 'SIGKILL');
        } catch {
          // ESRCH: the whole group has exited.
        }
      }
      await this.exited.catch(() => {});
    });
  }

  get pid(): number {
    if (this.child.pid === undefined) throw new Error('edgemqtt did not start');
    return this.child.pid;
  }

  /** Sends a signal to the CLI process (not to a wrapper; see signalPid). */
  signal(signal: NodeJS.Signals): void {
    if (this.exitStatus !== undefined) throw new Error(`cannot send ${signal}: edgemqtt already exited`);
    this.child.kill(signal);
  }

  /** Waits for a log line whose `msg` is `msg` (and that satisfies `predicate`). */
  async waitForLog(msg: string, options: WaitOptions & { predicate?: (line: LogLine) => boolean } = {}): Promise<LogLine> {
    const { predicate = () => true, ...wait } = options;
    const { item } = await this.logs.waitFor((line) => line.msg === msg && predicate(line), `log line "${msg}"`, wait);
    return item;
  }

  /** Waits for the exit, with a bound; returns the status and how long it took from now. */
  async waitForExit(timeoutMs = EXIT_TIMEOUT_MS): Promise<ExitStatus & { waitedMs: number }> {
    const started = performance.now();
    let timer: NodeJS.Timeout | undefined;
    const timeout = new Promise<never>((_, reject) => {
      timer = setTimeout(
        () => reject(new Error(`edgemqtt did not exit within ${timeoutMs} ms; stderr: ${this.stderr}`)),
        timeoutMs,
      );
    });
    try {
      const status = await Promise.race([this.exited, timeout]);
      return { ...status, waitedMs: performance.now() - started };
    } finally {
      clearTimeout(timer);
    }
  }
}

export interface CliResult extends ExitStatus {
  stdout: string;
  stderr: string;
  logs: LogLine[];
  /** stderr split into lines, without the trailing empty one. */
  stderrLines: string[];
}

/** Runs a CLI command to completion (bounded) and collects its output. */
export async function execCli(
  t: Test,
  args: string[],
  options: CliSpawnOptions & { timeoutMs?: number },
): Promise<CliResult> {
  const cli = new CliProcess(t, args, options);
  const status = await cli.waitForExit(options.timeoutMs ?? EXIT_TIMEOUT_MS);
  return {
    code: status.code,
    signal: status.signal,
    stdout: cli.stdout,
    stderr: cli.stderr,
    logs: cli.logs.items,
    stderrLines: cli.stderr.split('\n').filter((line, index, lines) => line !== '' || index < lines.length - 1),
  };
}

/** One sd_notify datagram as the service manager would receive it. */
export interface NotifyMessage {
  /** Sender PID from SCM_CREDENTIALS. */
  pid: number | null;
  /** The raw text, `KEY=VALUE` lines. */
  message: string;
  /** The assignments, in order. */
  assignments: string[];
}

/** True when the datagram carries this exact assignment, e.g. `READY=1`. */
export function carries(message: NotifyMessage, assignment: string): boolean {
  return message.assignments.includes(assignment);
}

/**
 * A unix datagram socket standing in for systemd's NOTIFY_SOCKET. Node cannot
 * bind one, so a python3 child (test/fixtures/notify-receiver.py) does and
 * prints each datagram as a JSON line.
 */
export class NotifySocket {
  readonly messages = new Recorder<NotifyMessage>((items) => items.map((item) => JSON.stringify(item.message)).join('\n'));

  private constructor(
    readonly path: string,
    private readonly child: ChildProcess,
  ) {}

  static async open(t: Test): Promise<NotifySocket> {
    // A short path: sun_path holds 108 bytes, and tap's fixture dirs are long.
    const dir = await mkdtemp(path.join(os.tmpdir(), 'edgemqtt-notify-'));
    const socketPath = path.join(dir, 'notify.sock');
    const child = spawn('python3', ['-u', path.join(fixturesDir, 'notify-receiver.py'), socketPath], {
      stdio: ['ignore', 'pipe', 'pipe'],
      env: childEnv(),
    });
    const exited = new Promise<void>((resolve) => child.once('close', () => resolve()));
    t.teardown(async () => {
      if (child.exitCode === null && child.signalCode === null) child.kill('SIGTERM');
      await exited;
      await rm(dir, { recursive: true, force: true });
    });
    const socket = new NotifySocket(socketPath, child);
    let stderr = '';
    child.stderr!.setEncoding('utf8').on('data', (text: string) => (stderr += text));
    const listening = new Promise<void>((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error('notify receiver did not bind its socket within 10 s')), 10_000);
      child.once('error', (error) => {
        clearTimeout(timer);
        reject(error);
      });
      void exited.then(() => {
        clearTimeout(timer);
        socket.messages.close(`notify receiver exited; stderr: ${stderr.trim()}`);
        reject(new Error(`notify receiver exited; stderr: ${stderr.trim()}`));
      });
      createInterface({ input: child.stdout!, crlfDelay: Infinity }).on('line', (line) => {
        if (line === 'LISTENING') {
          clearTimeout(timer);
          resolve();
          return;
        }
        const { pid, message } = JSON.parse(line) as { pid: number | null; message: string };
        socket.messages.push({ pid, message, assignments: message.split('\n').filter((item) => item !== '') });
      });
    });
    listening.catch(() => {});
    await listening;
    return socket;
  }

  /** Waits for a datagram carrying `assignment` (e.g. `READY=1`) at or after index `from`. */
  async waitFor(assignment: string, options: WaitOptions = {}): Promise<{ item: NotifyMessage; index: number }> {
    return this.messages.waitFor((message) => carries(message, assignment), assignment, options);
  }

  /** How many datagrams so far carry `assignment` (from index `from`). */
  count(assignment: string, from = 0): number {
    return this.messages.items.slice(from).filter((message) => carries(message, assignment)).length;
  }

  get receiverPid(): number | undefined {
    return this.child.pid;
  }
}
