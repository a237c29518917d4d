/**
 * How `npm run bench:throughput` prints its table: each cell the median of the
 * rounds with their spread (min–max), a ratio column of medians, markers for
 * cells a footnote explains (n/a, generator-bound), and the same figures in
 * the issue's short form (a Markdown table of medians).
 */
import { median, type BrokerEndpoint, type ClientProtocol, type LoadResult, type LoadSpec } from './common.js';
import type { RssResult } from './idle-rss.js';
import type { Protocol } from './protocols.js';

export const number = (value: number, digits = 0): string =>
  Number.isFinite(value) ? value.toLocaleString('en-US', { minimumFractionDigits: digits, maximumFractionDigits: digits }) : 'n/a';

/** 156234 → "156.2k"; below 10,000 the plain number. */
export const rate = (value: number): string => (Math.abs(value) >= 10_000 ? `${number(value / 1000, 1)}k` : number(value));

/** Left-aligned first column, right-aligned others, `gap` apart (three spaces unless told). */
export function table(headers: string[], rows: string[][], gap = '   '): string {
  const cells = [headers, ...rows];
  const widths = headers.map((_, column) => Math.max(...cells.map((line) => (line[column] ?? '').length)));
  const render = (line: string[]) =>
    line.map((cell, column) => (column === 0 ? cell.padEnd(widths[column] ?? 0) : cell.padStart(widths[column] ?? 0))).join(gap);
  return [render(headers), widths.map((width) => '-'.repeat(width)).join(gap), ...rows.map(render)].join('\n');
}

/**
 * One broker's figures for one table line, a value per round; or why the
 * broker has none (`na`: it cannot run this row, explained in a footnote).
 */
export interface Samples {
  values: number[];
  na?: string;
  /** Footnote marks to append to the cell, e.g. the generator-bound mark. */
  marks?: string;
}

/** Footnotes numbered in order of first use; the same text gets the same number. */
export class Footnotes {
  readonly #texts: string[] = [];

  mark(text: string): string {
    let index = this.#texts.indexOf(text);
    if (index === -1) index = this.#texts.push(text) - 1;
    return `[${index + 1}]`;
  }

  render(): string[] {
    return this.#texts.map((text, index) => `[${index + 1}] ${text}`);
  }
}

export function medianOf(samples: Samples | undefined): number {
  return samples && !samples.na && samples.values.length ? median(samples.values) : Number.NaN;
}

/** "156.2k (150.1k–160.3k)": the median and, over several rounds, the spread. */
export function cell(samples: Samples | undefined, format: (value: number) => string, notes: Footnotes): string {
  if (!samples) return '—';
  if (samples.na) return `n/a ${notes.mark(samples.na)}`;
  if (samples.values.length === 0) return '—';
  const values = samples.values;
  const middle = format(median(values));
  const spread = values.length > 1 ? ` (${format(Math.min(...values))}–${format(Math.max(...values))})` : '';
  return `${middle}${spread}${samples.marks ?? ''}`;
}

/** The ratio of two medians, or "" when either is missing. */
export function ratio(value: number, base: number): string {
  return Number.isFinite(value) && Number.isFinite(base) && base !== 0 ? `${number(value / base, 2)}×` : '';
}

// ---------------------------------------------------------------- the throughput report

/** The load generator at or above this share of a core may be what limits a figure. */
export const GENERATOR_BOUND_PERCENT = 90;

export const throughputOf = (result: LoadResult): number => (result.elapsedMs > 0 ? (result.delivered * 1000) / result.elapsedMs : Number.NaN);
export const cpuPercent = (ms: number, result: LoadResult): number => (result.elapsedMs > 0 ? (ms / result.elapsedMs) * 100 : Number.NaN);
export const generatorBound = (result: LoadResult): boolean => cpuPercent(result.loadgenCpuMs, result) >= GENERATOR_BOUND_PERCENT;

/** A row of the issue's table (run.ts's SCENARIOS). */
export interface Scenario {
  id: string;
  title: string;
  unit: string;
  /** Only MQTT 5 clients can send it (PUBLISH properties): no 3.1.1 row. */
  v5Only?: boolean;
  /** Undefined for rss, which is not a load-generator run. */
  spec?(endpoint: BrokerEndpoint, protocol: ClientProtocol): LoadSpec;
}

/** One scenario with one client protocol: its results, broker by broker, round by round. */
export interface CaseResults {
  key: string;
  scenario: Scenario;
  protocol: Protocol;
  runs: LoadResult[][];
  rss: RssResult[][];
  /** Why a broker cannot run this case at all (its cells read n/a). */
  na: Array<string | undefined>;
}

export interface ReportInput {
  brokerNames: string[];
  cases: CaseResults[];
  rounds: number;
  idleConnections: number;
}

const GENERATOR_BOUND_NOTE =
  `generator-bound: the load generator used ≥ ${GENERATOR_BOUND_PERCENT}% of a core in at least one round of this cell, ` +
  'so the figure may be the load generator\'s limit rather than the broker\'s';

/** Prints the full table (medians, spreads, CPU) and the issue's short form. */
export function printReport(input: ReportInput): void {
  const { brokerNames, cases } = input;
  const notes = new Footnotes();
  const base = brokerNames.indexOf('mosquitto');
  // Ratios for edgemqtt and its variants; Mosquitto is the base, nats-server the next mark.
  const compared = brokerNames.map((name, index) => index).filter((index) => index !== base && brokerNames[index] !== 'nats-server');
  const rows: string[][] = [];
  const summary: string[][] = [];
  const mdCell = (samples: Samples, format: (value: number) => string) =>
    samples.na ? 'n/a' : samples.values.length ? format(median(samples.values)) : '—';

  const line = (label: string, protocol: string, samples: Samples[], format: (value: number) => string, withRatio = true): number[] => {
    const medians = samples.map(medianOf);
    const ratios = withRatio && base !== -1 ? compared.map((index) => ratio(medians[index] as number, medians[base] as number)) : [];
    rows.push([label, protocol, ...samples.map((s) => cell(s, format, notes)), ratios.join(' | ')]);
    return medians;
  };
  const summarize = (label: string, parts: Samples[][], format: (value: number) => string) => {
    const brokersCells = brokerNames.map((_, index) => parts.map((samples) => mdCell(samples[index] as Samples, format)).join(' / '));
    const ratios =
      base === -1
        ? []
        : compared.map((index) =>
            parts.map((samples) => ratio(medianOf(samples[index]), medianOf(samples[base])) || '—').join(' / '),
          );
    summary.push([label, ...brokersCells, ...ratios]);
  };

  const firstProtocol = cases[0]?.protocol.name;
  for (const c of cases) {
    const { scenario } = c;
    const protocol = c.protocol.name;
    const inSummary = protocol === firstProtocol || scenario.v5Only === true;
    if (!scenario.spec) {
      const of = (pick: (r: RssResult) => number): Samples[] => c.rss.map((runs) => ({ values: runs.map(pick) }));
      const idle = of((r) => r.idleKb / 1024);
      const connected = of((r) => r.connectedKb / 1024);
      const perConnection = of((r) => (r.connectedKb - r.idleKb) / r.connections);
      line('RSS idle, MB', protocol, idle, (v) => number(v, 1));
      line(`RSS with ${number(input.idleConnections)} idle connections, MB`, protocol, connected, (v) => number(v, 1));
      line('    KB per idle connection', protocol, perConnection, (v) => number(v, 1));
      summarize(`${scenario.title}, MB`, [idle, connected], (v) => number(v, 1));
      summarize('KB per idle connection', [perConnection], (v) => number(v, 1));
      continue;
    }
    const bound = c.runs.map((runs) => (runs.some(generatorBound) ? ` ${notes.mark(GENERATOR_BOUND_NOTE)}` : ''));
    const of = (pick: (r: LoadResult) => number, marked = false): Samples[] =>
      c.runs.map((runs, index) => ({ values: runs.map(pick), na: c.na[index], marks: marked ? bound[index] : undefined }));
    if (scenario.id === 'latency') {
      const p50 = of((r) => r.latency?.p50Ms ?? Number.NaN, true);
      const p99 = of((r) => r.latency?.p99Ms ?? Number.NaN, true);
      line(`${scenario.title}: p50 ms`, protocol, p50, (v) => number(v, 3));
      line('    p99 ms', protocol, p99, (v) => number(v, 3));
      line('    lost messages', protocol, of((r) => r.latency?.lost ?? Number.NaN), (v) => number(v), false);
      if (inSummary) summarize(`${scenario.title}, p50 / p99 ms`, [p50, p99], (v) => number(v, 2));
    } else {
      const throughput = of(throughputOf, true);
      line(`${scenario.title}, ${scenario.unit}`, protocol, throughput, rate);
      line('    broker CPU µs per delivery', protocol, of((r) => (r.brokerCpuMs * 1000) / Math.max(1, r.delivered)), (v) => number(v, 2));
      if (c.runs.some((runs) => runs.some((r) => r.lost > 0 || r.timedOut))) {
        line('    deliveries lost (or stalled runs)', protocol, of((r) => r.lost + (r.timedOut ? 1 : 0)), (v) => number(v), false);
      }
      if (inSummary) summarize(`${scenario.title}${protocol === '5' ? ' (MQTT 5)' : ''}, ${scenario.unit}`, [throughput], rate);
    }
    line('    broker CPU, % of a core', protocol, of((r) => cpuPercent(r.brokerCpuMs, r)), (v) => number(v), false);
    line('    load generator CPU, % of a core', protocol, of((r) => cpuPercent(r.loadgenCpuMs, r)), (v) => number(v), false);
  }

  const ratioHeader = base === -1 ? '' : `ratio ${compared.map((index) => `${brokerNames[index]}/mosquitto`).join(' | ')}`;
  console.log('');
  console.log(table(['metric', 'MQTT', ...brokerNames, ratioHeader], rows));
  console.log('');
  const multiple = input.rounds > 1;
  console.log(
    (multiple ? `Each cell: the median of ${input.rounds} rounds (min–max over the rounds); ratios are of medians. ` : 'One round: no spread. ') +
      'Throughput: higher is better; latency, CPU and RSS: lower is better. Throughput is counted at the subscriber(s) ' +
      'over the measured interval after warm-up, each publisher keeping a bounded window of messages in flight (closed loop; ' +
      'what was published must arrive). QoS 1: each publisher at most the in-flight count without PUBACK; the subscriber ' +
      'PUBACKs every delivery. CPU: user+system time of the whole process over the measured interval (100% = one core). ' +
      'RSS: VmRSS of a freshly started broker once stable, then with the idle connections open.',
  );
  for (const note of notes.render()) console.log(note);
  if (input.rounds < 3) console.log('WARNING: fewer than 3 rounds: these ratios are not fit to publish (one round swings by ±30% here).');

  console.log('\nIn the issue\'s form (medians; 3.1.1 clients unless marked):\n');
  const header = ['', ...brokerNames, ...compared.map((index) => `${brokerNames[index]}/mosquitto`)];
  if (base === -1) header.splice(1 + brokerNames.length);
  console.log(`| ${header.join(' | ')} |`);
  console.log(`|${header.map(() => '---').join('|')}|`);
  for (const summaryRow of summary) console.log(`| ${summaryRow.join(' | ')} |`);
}
