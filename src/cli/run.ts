/**
 * The `edgemqtt` command line. Returns an exit code instead of exiting, so
 * that only `src/bin` ends the process.
 */
import yargs from 'yargs';
import { ConfigError } from '../errors.js';
import { configJsonSchema } from '../config/json-schema.js';
import { configSourcesFrom, withConfigOptions } from './config-options.js';
import { checkConfig } from './commands/check-config.js';
import { printConfig } from './commands/print-config.js';
import { start, exitCodeFor } from './commands/start.js';
import { withPasswdCommands } from './commands/passwd.js';
import { withCtlCommands } from './commands/ctl.js';
import { ExitCode, type CliIo } from './io.js';

/**
 * Thrown from yargs' fail handler. Throwing (rather than noting the message
 * and returning) is what stops yargs: otherwise it still runs the command's
 * handler, and `start --mqtt-prot 1884` would start a broker on the default
 * port and report the typo only after it stopped.
 */
class UsageError extends Error {
  override name = 'UsageError';
}

export async function runCli(io: CliIo): Promise<number> {
  let exitCode: number = ExitCode.ok;

  const cli = yargs(io.argv)
    .scriptName('edgemqtt')
    .usage('$0 <command> [options]\n\nAn MQTT 3.1.1 and 5.0 broker for edge gateways: TCP and WebSocket clients, durable sessions.')
    .command(
      'start',
      'Run the broker until SIGTERM or SIGINT (SIGHUP reloads the config)',
      (y) => withConfigOptions(y),
      async (argv) => {
        exitCode = await start(io, configSourcesFrom(argv, io.env));
      },
    )
    .command(
      'check-config <file>',
      'Check a config file and list every problem (exit 78 when invalid)',
      (y) => y.positional('file', { type: 'string', demandOption: true, describe: 'YAML config file' }),
      async (argv) => {
        exitCode = await checkConfig(io, argv.file);
      },
    )
    .command(
      'print-config',
      'Print the effective config: defaults < file < EDGEMQTT_* env < flags, secrets redacted',
      (y) => withConfigOptions(y).option('json', { type: 'boolean', default: false, describe: 'Print JSON, not YAML' }),
      async (argv) => {
        exitCode = await printConfig(io, configSourcesFrom(argv, io.env), argv.json ? 'json' : 'yaml');
      },
    )
    .command(
      'passwd',
      'Manage the password file (auth.passwordFile): add, rm, list users',
      (y) => withPasswdCommands(y, io, (code) => (exitCode = code)),
    )
    .command(
      'ctl',
      'Drive a running daemon through its admin API: status, clients, disconnect, sessions, retained, blocks, reload',
      (y) => withCtlCommands(y, io, (code) => (exitCode = code)),
    )
    .command(
      'schema',
      'Print the JSON Schema of the config file (for editor completion)',
      (y) => y,
      () => {
        io.stdout.write(`${JSON.stringify(configJsonSchema(), null, 2)}\n`);
      },
    )
    .epilogue(
      'Every config key can also be set with an environment variable: EDGEMQTT_ and the key path in\n' +
        'upper snake case, e.g. mqtt.port → EDGEMQTT_MQTT_PORT, broker.maxPacketSizeBytes →\n' +
        'EDGEMQTT_BROKER_MAX_PACKET_SIZE_BYTES. Exit codes: 0 ok, 64 usage, 65 corrupt store,\n' +
        '69 address unavailable, 70 internal error, 71 disk full, 73 data directory unusable,\n' +
        '74 store unreadable, 75 store locked, 77 refused by the admin API (ctl), 78 invalid config,\n' +
        '130 forced stop.',
    )
    .demandCommand(1, 'Name a command: start, check-config, print-config, passwd, ctl or schema')
    .strict()
    .help()
    .alias('help', 'h')
    .version()
    .wrap(Math.min(100, 120))
    .exitProcess(false)
    .fail((message, error) => {
      throw error ?? new UsageError(message);
    });

  try {
    await cli.parseAsync();
  } catch (error) {
    if (error instanceof UsageError) {
      io.stderr.write(`${await cli.getHelp()}\n\n${error.message}\n`);
      return ExitCode.usage;
    }
    if (error instanceof ConfigError) {
      io.stderr.write(`edgemqtt: invalid configuration\n`);
      for (const problem of error.problems) io.stderr.write(`  - ${problem}\n`);
      return ExitCode.config;
    }
    io.stderr.write(`edgemqtt: ${error instanceof Error ? error.message : String(error)}\n`);
    return exitCodeFor(error);
  }
  return exitCode;
}
