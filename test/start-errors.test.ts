/**
 * What `edgemqtt start` says when the operator has something to fix: the
 * exit code of its kind (docs/systemd.md), one line on stderr that names
 * the cause, one fatal log line with the error's code, and no stack trace
 * anywhere (stack traces are for our bugs). Spawns the built CLI.
 */
import t from 'tap';
import type { Test } from 'tap';
import { createServer, type AddressInfo } from 'node:net';
import { writeFileSync } from 'node:fs';
import { writeFile } from 'node:fs/promises';
import path from 'node:path';
import { ExitCode } from '../src/cli/io.js';
import { tempDir } from './helpers/daemon.js';
import { CliProcess, execCli, writeConfig, type CliResult } from './helpers/process.js';

/** A stack frame as V8 prints it, in plain text or inside a JSON string. */
const STACK_FRAME = / {4}at /;

function oneClearLine(t: Test, result: CliResult, exitCode: number, cause: RegExp, errorCode: string): void {
  t.equal(result.code, exitCode, `exit ${exitCode}`);
  t.equal(result.stderrLines.length, 1, 'one line on stderr');
  t.match(result.stderrLines[0], cause, 'naming the cause');
  t.notMatch(result.stderr + result.stdout, STACK_FRAME, 'no stack trace on stderr or in the log');
  const errors = result.logs.filter((line) => line.level === 'error' || line.level === 'fatal');
  t.equal(errors.length, 1, 'one error line in the log');
  t.match(errors[0], { level: 'fatal', msg: 'start failed', code: errorCode, err: cause }, 'with the code and the same words');
  t.notOk(result.logs.some((line) => line.msg === 'edgemqtt ready'), 'never ready');
}

async function configIn(dir: string, extra: Record<string, unknown> = {}): Promise<string> {
  return writeConfig(dir, { dataDir: path.join(dir, 'data'), log: { level: 'info' }, mqtt: { host: '127.0.0.1', port: 0 }, http: { enabled: false }, ...extra });
}

t.test('a bad config: exit 78, each problem named, nothing started', async (t) => {
  const dir = tempDir(t);
  const file = await writeConfig(dir, 'mqtt:\n  port: 70000\n');
  const result = await execCli(t, ['start', '--config', file], { cwd: dir });
  t.equal(result.code, ExitCode.config, 'exit 78');
  t.same(result.stderrLines.length, 2, 'a heading and the one problem');
  t.match(result.stderrLines, ['edgemqtt: invalid configuration', /^ {2}- mqtt\.port: .*65535/]);
  t.notMatch(result.stderr, STACK_FRAME, 'no stack trace');
  t.equal(result.stdout, '', 'no log: nothing started');
});

t.test('a port in use: exit 69', async (t) => {
  const dir = tempDir(t);
  const blocker = createServer();
  await new Promise<void>((resolve) => blocker.listen(0, '127.0.0.1', resolve));
  t.teardown(() => new Promise<void>((resolve) => blocker.close(() => resolve())));
  const { port } = blocker.address() as AddressInfo;
  const result = await execCli(t, ['start', '--config', await configIn(dir, { mqtt: { host: '127.0.0.1', port } })], { cwd: dir });
  oneClearLine(t, result, ExitCode.unavailable, new RegExp(`mqtt listener cannot bind 127\\.0\\.0\\.1:${port}: EADDRINUSE`), 'EDGEMQTT_LISTEN_FAILED');
});

t.test('a data directory that cannot be one: exit 73', async (t) => {
  const dir = tempDir(t);
  const plainFile = path.join(dir, 'not-a-dir');
  writeFileSync(plainFile, '');
  const result = await execCli(t, ['start', '--config', await configIn(dir, { dataDir: path.join(plainFile, 'data') })], { cwd: dir });
  oneClearLine(t, result, ExitCode.cantCreate, /data directory .*not-a-dir\/data is not usable: ENOTDIR/, 'EDGEMQTT_DATA_DIR');
});

t.test('a store locked by another instance on the same data directory, then a corrupt one', async (t) => {
  const dir = tempDir(t);
  const config = await configIn(dir);
  const running = new CliProcess(t, ['start', '--config', config], { cwd: dir });
  await running.waitForLog('edgemqtt ready');
  const second = await execCli(t, ['start', '--config', config], { cwd: dir });
  oneClearLine(t, second, ExitCode.tempFail, /store .* is locked: another edgemqtt instance is using this data directory/, 'EDGEMQTT_STORE_LOCKED');
  running.signal('SIGTERM');
  t.equal((await running.waitForExit()).code, 0, 'the first instance stops normally');

  // No trailing newline: LevelDB reports corruption.
  await writeFile(path.join(dir, 'data', 'store', 'CURRENT'), 'not a manifest name');
  const corrupt = await execCli(t, ['start', '--config', config], { cwd: dir });
  oneClearLine(t, corrupt, ExitCode.dataError, /store .* is corrupt \(.+\); restore it from a backup or move it aside to start empty/, 'EDGEMQTT_STORE_CORRUPT');
});
