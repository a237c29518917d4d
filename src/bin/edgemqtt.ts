#!/usr/bin/env node
/**
 * The process boundary: the only module that reads argv and env, installs
 * signal handlers and sets the exit code.
 */
import { runCli } from '../cli/run.js';
import type { Signal } from '../cli/io.js';

const exitCode = await runCli({
  argv: process.argv.slice(2),
  env: process.env,
  stdout: process.stdout,
  stderr: process.stderr,
  pid: process.pid,
  onSignal: (signal: Signal, handler: () => void) => process.on(signal, handler),
});
// Let stdout drain, then exit even if a stray handle (a client socket being
// torn down) would keep the loop alive.
process.exitCode = exitCode;
process.stdout.write('', () => process.exit(exitCode));
