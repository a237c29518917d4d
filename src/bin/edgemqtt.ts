#!/usr/bin/env node
/**
 * The process boundary: the only module that reads argv and env, installs
 * signal handlers and sets the exit code.
 */
import { fstatSync } from 'node:fs';
import { runCli } from '../cli/run.js';
import type { Signal } from '../cli/io.js';

/** Whether fd 1 is the stream `$JOURNAL_STREAM` (`<device>:<inode>`) names; see systemd.exec(5). */
function stdoutIsJournal(journalStream: string | undefined): boolean {
  if (!journalStream) return false;
  try {
    const stat = fstatSync(1, { bigint: true });
    return journalStream === `${stat.dev}:${stat.ino}`;
  } catch {
    return false;
  }
}

const exitCode = await runCli({
  argv: process.argv.slice(2),
  env: process.env,
  stdout: process.stdout,
  stderr: process.stderr,
  pid: process.pid,
  stdoutIsJournal: stdoutIsJournal(process.env.JOURNAL_STREAM),
  onSignal: (signal: Signal, handler: () => void) => process.on(signal, handler),
  // A getter: Node opens standard input on first access, and only `passwd` reads it.
  get stdin() {
    return process.stdin;
  },
});
// Let stdout drain, then exit even if a stray handle (a client socket being
// torn down) would keep the loop alive.
process.exitCode = exitCode;
process.stdout.write('', () => process.exit(exitCode));
