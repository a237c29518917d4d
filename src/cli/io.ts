/**
 * What the CLI needs from its process, passed in by `src/bin` so that no other
 * module touches `process` and the CLI runs in tests as it runs for real.
 */
export type Signal = 'SIGTERM' | 'SIGINT' | 'SIGHUP';

export interface CliIo {
  /** Arguments after the program name. */
  argv: string[];
  env: Record<string, string | undefined>;
  stdout: { write(text: string): unknown };
  stderr: { write(text: string): unknown };
  pid: number;
  /**
   * True when standard output is the journal's stream: `$JOURNAL_STREAM`
   * names the device and inode of fd 1. The variable alone is not enough, as
   * it is inherited by every child of a service, whatever their stdout is.
   * Log lines then carry `<N>` priority prefixes. Defaults to false.
   */
  stdoutIsJournal?: boolean;
  onSignal(signal: Signal, handler: () => void): void;
  /** Standard input, for commands that read a secret from it (`passwd add`); absent = nothing to read. */
  stdin?: CliInput;
}

/** Standard input as the CLI uses it: a byte stream, with raw mode when it is a terminal. */
export type CliInput = NodeJS.ReadableStream & { isTTY?: boolean; setRawMode?(mode: boolean): unknown };

/** sysexits(3) codes, so supervisors can tell a bad config from a crash. */
export const ExitCode = {
  ok: 0,
  failure: 1,
  /** Wrong arguments. */
  usage: 64,
  /** The store is corrupt, or not one this version can read: restarting cannot help. */
  dataError: 65,
  /** A listener address is unavailable (port in use, permission). */
  unavailable: 69,
  /** Unexpected internal error. */
  software: 70,
  /** The store's file system is full (ENOSPC/EDQUOT) at start-up: free some space. */
  storeFull: 71,
  /** The data directory cannot be created or written. */
  cantCreate: 73,
  /** The store cannot be read (I/O error, permissions). */
  ioError: 74,
  /** The store is locked by another process (another instance on the same data directory). */
  tempFail: 75,
  /** Permission denied: the admin API refused the credentials (`edgemqtt ctl`). */
  noPermission: 77,
  /** The configuration is invalid; systemd should not restart-loop on it. */
  config: 78,
  /** A second stop signal arrived before the graceful stop finished. */
  forced: 130,
} as const;
