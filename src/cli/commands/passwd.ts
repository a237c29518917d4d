/**
 * `edgemqtt passwd add|rm|list FILE [USER]`: manages the password file the
 * daemon reads (auth.passwordFile). The daemon picks changes up on SIGHUP
 * (`systemctl reload edgemqtt`).
 *
 * The password never comes from the command line, where `ps` and shell
 * history would show it. `add` reads it:
 *   - from a terminal: prompted twice, not echoed;
 *   - from a pipe: the first line of standard input, for scripts
 *     (`printf '%s\n' "$PASSWORD" | edgemqtt passwd add FILE USER`);
 *   - with `--password-file PATH`: the first line of that file, e.g. a
 *     systemd credential or a secret mounted by provisioning.
 *
 * The file is replaced atomically (write beside it, then rename), keeping its
 * mode and, where permitted, its owner and group; a new file gets mode 0600.
 * Comments, blank lines and the order of users are kept.
 */
import { chmod, chown, open, readFile, rename, stat, unlink } from 'node:fs/promises';
import { randomBytes } from 'node:crypto';
import path from 'node:path';
import type { Argv } from 'yargs';
import { SecurityFileError } from '../../errors.js';
import { DEFAULT_SCRYPT, PasswordFile, hashPassword, removeUserLine, setUserLine, usernameProblem } from '../../auth/password-file.js';
import { ExitCode, type CliInput, type CliIo } from '../io.js';
import { firstLine, readFirstLine } from '../first-line.js';

/** Longest password read (bytes); MQTT carries at most 65535 [MQTT-3.1.3.5]. */
const MAX_PASSWORD_BYTES = 65535;

class PasswdError extends Error {
  constructor(
    message: string,
    readonly exitCode: number,
  ) {
    super(message);
  }
}

export function withPasswdCommands<T>(yargs: Argv<T>, io: CliIo, setExitCode: (code: number) => void): Argv<T> {
  const run = async (action: () => Promise<void>) => {
    try {
      await action();
      setExitCode(ExitCode.ok);
    } catch (error) {
      if (error instanceof PasswdError) {
        io.stderr.write(`edgemqtt passwd: ${error.message}\n`);
        setExitCode(error.exitCode);
        return;
      }
      if (error instanceof SecurityFileError) {
        io.stderr.write(`edgemqtt passwd: ${error.file} is not a valid password file:\n`);
        for (const problem of error.problems) io.stderr.write(`  - ${problem}\n`);
        setExitCode(ExitCode.config);
        return;
      }
      throw error;
    }
  };
  return yargs
    .command(
      'add <file> <user>',
      'Add a user, or change their password (read from the terminal, standard input or --password-file)',
      (y) =>
        y
          .positional('file', { type: 'string', demandOption: true, describe: 'Password file (created if missing, mode 0600)' })
          .positional('user', { type: 'string', demandOption: true, describe: 'MQTT user name' })
          .option('password-file', {
            type: 'string',
            describe: 'Read the password from the first line of this file instead of standard input',
          })
          .option('scrypt-n', {
            type: 'number',
            default: DEFAULT_SCRYPT.N,
            describe:
              'scrypt cost (a power of two, 1024–65536): each login costs the broker about this many × 2.5 µs of CPU; ' +
              'lower it for fleets that reconnect all at once, keep it high where the file could leak',
          }),
      (argv) =>
        run(async () => {
          const user = String(argv.user);
          const problem = usernameProblem(user);
          if (problem) throw new PasswdError(problem, ExitCode.usage);
          const password =
            argv['password-file'] !== undefined ? await passwordFromFile(argv['password-file']) : await passwordFromInput(io);
          const cost = argv['scrypt-n'];
          if (!Number.isInteger(cost) || cost < 1024 || cost > 65536 || (cost & (cost - 1)) !== 0) {
            throw new PasswdError(`--scrypt-n must be a power of two from 1024 to 65536, not ${cost}`, ExitCode.usage);
          }
          const existing = await readExisting(argv.file);
          const hash = await hashPassword(password, { ...DEFAULT_SCRYPT, N: cost });
          const { text, existed } = setUserLine(existing?.text ?? '', user, hash);
          await writeAtomically(argv.file, text, existing?.stats);
          io.stdout.write(`${existed ? 'updated' : 'added'} ${user} in ${argv.file}\n`);
        }),
    )
    .command(
      'rm <file> <user>',
      'Remove a user',
      (y) =>
        y
          .positional('file', { type: 'string', demandOption: true, describe: 'Password file' })
          .positional('user', { type: 'string', demandOption: true, describe: 'MQTT user name' }),
      (argv) =>
        run(async () => {
          const user = String(argv.user);
          const existing = await readExisting(argv.file);
          if (!existing) throw new PasswdError(`${argv.file} does not exist`, ExitCode.failure);
          const { text, existed } = removeUserLine(existing.text, user);
          if (!existed) throw new PasswdError(`no user ${JSON.stringify(user)} in ${argv.file}`, ExitCode.failure);
          await writeAtomically(argv.file, text, existing.stats);
          io.stdout.write(`removed ${user} from ${argv.file}\n`);
        }),
    )
    .command(
      'list <file>',
      'List the users, one per line',
      (y) => y.positional('file', { type: 'string', demandOption: true, describe: 'Password file' }),
      (argv) =>
        run(async () => {
          const existing = await readExisting(argv.file);
          if (!existing) throw new PasswdError(`${argv.file} does not exist`, ExitCode.failure);
          for (const user of PasswordFile.parse(existing.text, argv.file).users()) io.stdout.write(`${user}\n`);
        }),
    )
    .demandCommand(1, 'Name a passwd command: add, rm or list') as Argv<T>;
}

interface ExistingFile {
  text: string;
  stats: { mode: number; uid: number; gid: number };
}

/** The file's text, checked to be a valid password file; undefined when it does not exist. */
async function readExisting(file: string): Promise<ExistingFile | undefined> {
  let text: string;
  try {
    text = await readFile(file, 'utf8');
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
    throw new PasswdError(`cannot read ${file} (${(error as NodeJS.ErrnoException).code ?? String(error)})`, ExitCode.failure);
  }
  // Refuse to rewrite a file that does not parse: the daemon would refuse it too.
  PasswordFile.parse(text, file);
  const { mode, uid, gid } = await stat(file);
  return { text, stats: { mode: mode & 0o7777, uid, gid } };
}

async function writeAtomically(file: string, text: string, previous: ExistingFile['stats'] | undefined): Promise<void> {
  const temp = path.join(path.dirname(file), `.${path.basename(file)}.${randomBytes(6).toString('hex')}.tmp`);
  const mode = previous?.mode ?? 0o600;
  try {
    const handle = await open(temp, 'wx', mode);
    try {
      await handle.writeFile(text, 'utf8');
      await handle.sync();
    } finally {
      await handle.close();
    }
    await chmod(temp, mode);
    if (previous) {
      // The daemon's group must keep reading it when root edits the file.
      await chown(temp, previous.uid, previous.gid).catch(() => undefined);
    }
    await rename(temp, file);
  } catch (error) {
    await unlink(temp).catch(() => undefined);
    const code = (error as NodeJS.ErrnoException).code;
    throw new PasswdError(`cannot write ${file} (${code ?? String(error)})`, ExitCode.failure);
  }
}

function checkPassword(password: string): string {
  if (password === '') throw new PasswdError('the password is empty', ExitCode.usage);
  if (Buffer.byteLength(password, 'utf8') > MAX_PASSWORD_BYTES) {
    throw new PasswdError(`the password is longer than ${MAX_PASSWORD_BYTES} bytes`, ExitCode.usage);
  }
  return password;
}

async function passwordFromFile(file: string): Promise<string> {
  return checkPassword(await readFirstLine(file, (message) => new PasswdError(message, ExitCode.failure)));
}

async function passwordFromInput(io: CliIo): Promise<string> {
  const input = io.stdin;
  if (!input) throw new PasswdError('no password: give it on standard input or with --password-file', ExitCode.usage);
  if (input.isTTY && input.setRawMode) {
    const first = await promptHidden(input, io, 'Password: ');
    const second = await promptHidden(input, io, 'Reenter password: ');
    if (first !== second) throw new PasswdError('the passwords do not match', ExitCode.usage);
    return checkPassword(first);
  }
  return checkPassword(firstLine(await readAll(input)));
}

/** Reads a pipe to its end (bounded: only the first line is used). */
async function readAll(input: CliInput): Promise<string> {
  const chunks: Buffer[] = [];
  let size = 0;
  for await (const chunk of input) {
    const bytes = typeof chunk === 'string' ? Buffer.from(chunk) : chunk;
    chunks.push(bytes);
    size += bytes.length;
    if (size > MAX_PASSWORD_BYTES + 2 || bytes.includes(0x0a)) break;
  }
  return Buffer.concat(chunks).toString('utf8');
}

/** Reads one line from a terminal in raw mode, without echoing it. */
function promptHidden(input: CliInput, io: CliIo, prompt: string): Promise<string> {
  io.stderr.write(prompt);
  input.setRawMode!(true);
  input.resume();
  return new Promise((resolve, reject) => {
    let text = '';
    const finish = () => {
      input.off('data', onData);
      input.setRawMode!(false);
      input.pause();
      io.stderr.write('\n');
    };
    const onData = (chunk: Buffer | string) => {
      for (const char of chunk.toString()) {
        if (char === '\r' || char === '\n') {
          finish();
          resolve(text);
          return;
        }
        if (char === '\u0003' || char === '\u0004') {
          finish();
          reject(new PasswdError('cancelled', ExitCode.failure));
          return;
        }
        if (char === '\u007f' || char === '\b') text = [...text].slice(0, -1).join('');
        else text += char;
      }
    };
    input.on('data', onData);
  });
}
