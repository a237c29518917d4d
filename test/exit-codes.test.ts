/**
 * Every exit code the CLI can return is documented where an operator looks:
 * the exit-code table of docs/systemd.md and `edgemqtt --help`; and each
 * code the unit will not restart on is documented as such.
 */
import { readFile } from 'node:fs/promises';
import t from 'tap';
import { ExitCode } from '../src/cli/io.js';
import { assertBuilt, execCli } from './helpers/process.js';

const codes = [...new Set(Object.values(ExitCode))].sort((a, b) => a - b);

/** The rows of docs/systemd.md's exit-code table, by code. */
async function documentedRows(): Promise<Map<number, string>> {
  const text = await readFile('docs/systemd.md', 'utf8');
  const rows = new Map<number, string>();
  for (const line of text.split('\n')) {
    const match = /^\| (\d+) \|/.exec(line);
    if (match) rows.set(Number(match[1]), line);
  }
  return rows;
}

t.test('docs/systemd.md has a row for every exit code', async (t) => {
  const rows = await documentedRows();
  for (const code of codes) t.ok(rows.has(code), `exit ${code} is in the table`);
  t.same([...rows.keys()].filter((code) => !codes.includes(code as (typeof codes)[number])), [], 'and no code the CLI does not return');
});

t.test('the codes the unit does not restart on are documented as "no restart"', async (t) => {
  const unit = await readFile('systemd/edgemqtt.service', 'utf8');
  const prevented = /^RestartPreventExitStatus=(.*)$/m.exec(unit)?.[1]?.trim().split(/\s+/).map(Number) ?? [];
  t.ok(prevented.length > 0, 'the unit lists RestartPreventExitStatus=');
  const rows = await documentedRows();
  for (const code of prevented) t.match(rows.get(code) ?? '', /\*\*no restart\*\*/, `exit ${code}: no restart`);
  for (const [code, row] of rows) {
    if (code !== 0 && !prevented.includes(code)) t.notMatch(row, /no restart/, `exit ${code} is restarted, as the table says`);
  }
});

t.test('edgemqtt --help lists every exit code', async (t) => {
  assertBuilt();
  const help = await execCli(t, ['--help'], { cwd: t.testdir() });
  t.equal(help.code, 0);
  const stdout = help.stdout;
  const listed = /Exit codes: ([^.]*)\./.exec(stdout.replace(/\s+/g, ' '))?.[1] ?? '';
  const numbers = [...listed.matchAll(/(\d+) [a-z]/g)].map((match) => Number(match[1]));
  t.same(numbers, codes, 'in order, each once');
});
