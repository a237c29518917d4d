/**
 * The architecture, checked: every module under src/ imports only downwards,
 * and no import goes round in a circle.
 *
 * A module may import from its own group, or from a group of a LOWER rank;
 * groups of the same rank never import each other (the daemon wires them).
 * The table (LAYERS), top to bottom:
 *
 *   9  bin            the executable; the only code that touches `process`
 *   8  cli, index     the command line; the library entry (re-exports)
 *   7  daemon         src/daemon.ts and src/daemon/: builds the parts below
 *                     and wires them together (reload included)
 *   6  metrics, admin, dashboard
 *                     what an operator sees and steers: Prometheus metrics
 *                     and $SYS, the admin API, the dashboard. Each reads or
 *                     acts on several parts below, handed to it by the daemon
 *   5  transports, broker, bridge, auth, systemd
 *                     the daemon's parts; each is handed what it needs of
 *                     the others (an interface it declares, an object the
 *                     daemon passes) instead of importing them
 *   4  config         the settings schema, loading, redaction
 *   3  persistence    the LevelDB store; it is given resolved options and
 *                     never reads config. It sits below config because the
 *                     schema takes its `persistence.*` defaults from
 *                     persistence/options.ts (one source of truth).
 *   2  util           small shared helpers, importable from anywhere
 *   1  observability  the logger (with its LogLevel) and the health report:
 *                     every layer logs, persistence and config included, so
 *                     the logger cannot sit beside them in the middle; it
 *                     and the health endpoints are leaves that import
 *                     nothing of ours (stats are handed to them)
 *   0  errors         src/errors.ts: the error classes and codes every layer
 *                     throws
 *
 * `import type` counts like any import: a type names the module it belongs
 * to, and a type in the wrong layer is how the next runtime import starts.
 * An exception is a named, explained edge in EXCEPTIONS; one that is no
 * longer used fails the test too, so the list only shrinks.
 */
import t from 'tap';
import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import ts from 'typescript';

const SRC = path.resolve('src');

interface Layer {
  rank: number;
  group: string;
  /** Paths relative to src/: a folder ends with '/', anything else is one file. */
  paths: readonly string[];
}

const LAYERS: readonly Layer[] = [
  { rank: 9, group: 'bin', paths: ['bin/'] },
  { rank: 8, group: 'cli', paths: ['cli/'] },
  { rank: 8, group: 'index', paths: ['index.ts'] },
  { rank: 7, group: 'daemon', paths: ['daemon.ts', 'daemon/'] },
  { rank: 6, group: 'metrics', paths: ['metrics/'] },
  { rank: 6, group: 'admin', paths: ['admin/'] },
  { rank: 6, group: 'dashboard', paths: ['dashboard/'] },
  { rank: 5, group: 'transports', paths: ['transports/'] },
  { rank: 5, group: 'broker', paths: ['broker/'] },
  { rank: 5, group: 'bridge', paths: ['bridge/'] },
  { rank: 5, group: 'auth', paths: ['auth/'] },
  { rank: 5, group: 'systemd', paths: ['systemd/'] },
  { rank: 4, group: 'config', paths: ['config/'] },
  { rank: 3, group: 'persistence', paths: ['persistence/'] },
  { rank: 2, group: 'util', paths: ['util/'] },
  { rank: 1, group: 'observability', paths: ['observability/'] },
  { rank: 0, group: 'errors', paths: ['errors.ts'] },
];

interface Exception {
  from: string;
  to: string;
  why: string;
}

/** Edges that break the table on purpose, each with the reason (paths relative to src/). */
const EXCEPTIONS: readonly Exception[] = [
  {
    from: 'broker/broker.ts',
    to: 'auth/authorizer.ts',
    why:
      'type AccessHooks: the hooks the broker installs on aedes, declared by the authorizer, whose ' +
      'install() still wraps aedes.publish. Issue 8 puts every aedes touch behind one seam in src/broker ' +
      'and has the ACL answer allow/deny to the broker; the contract then belongs to the broker and the ' +
      'authorizer fits it without importing it, and this exception goes.',
  },
];

/** An edge from one module to another, both relative to src/ with '/' separators. */
interface Edge {
  from: string;
  to: string;
  specifier: string;
}

function layerOf(file: string, layers: readonly Layer[] = LAYERS): Layer | undefined {
  return layers.find((layer) => layer.paths.some((p) => (p.endsWith('/') ? file.startsWith(p) : file === p)));
}

function sourceFiles(dir: string): string[] {
  const files: string[] = [];
  for (const entry of readdirSync(dir, { withFileTypes: true })) {
    const full = path.join(dir, entry.name);
    if (entry.isDirectory()) files.push(...sourceFiles(full));
    else if (entry.name.endsWith('.ts')) files.push(full);
  }
  return files;
}

const relative = (full: string) => path.relative(SRC, full).split(path.sep).join('/');

/**
 * Every relative specifier a file names: `import`, `import type`,
 * `export … from`, `import()` (TypeScript's own scanner, so multi-line
 * imports and comments are handled as the compiler handles them).
 */
function specifiersOf(file: string): string[] {
  const info = ts.preProcessFile(readFileSync(file, 'utf8'), true, true);
  return info.importedFiles.map((f) => f.fileName).filter((s) => s.startsWith('./') || s.startsWith('../'));
}

/** `./x.js` → the file that compiles to it (`./x.ts`). */
function resolve(from: string, specifier: string): string {
  const target = path.resolve(path.dirname(from), specifier);
  const asTs = target.replace(/\.js$/, '.ts');
  return existsSync(asTs) ? asTs : target;
}

function edgesOf(files: readonly string[]): { edges: Edge[]; unresolved: string[] } {
  const edges: Edge[] = [];
  const unresolved: string[] = [];
  for (const file of files) {
    for (const specifier of specifiersOf(file)) {
      const target = resolve(file, specifier);
      if (!existsSync(target)) unresolved.push(`${relative(file)}: ${specifier}`);
      else if (target.startsWith(SRC + path.sep) && target.endsWith('.ts')) edges.push({ from: relative(file), to: relative(target), specifier });
    }
  }
  return { edges, unresolved };
}

/** Each edge the table forbids, as `from → to (from's group → to's group)`. */
function layerViolations(edges: readonly Edge[], layers: readonly Layer[], exceptions: readonly Exception[]): string[] {
  const problems: string[] = [];
  for (const edge of edges) {
    const from = layerOf(edge.from, layers);
    const to = layerOf(edge.to, layers);
    if (!from || !to || from.group === to.group || to.rank < from.rank) continue;
    if (exceptions.some((e) => e.from === edge.from && e.to === edge.to)) continue;
    problems.push(`${edge.from} → ${edge.to} (${from.group}, rank ${from.rank} → ${to.group}, rank ${to.rank})`);
  }
  return problems;
}

/** One circle of imports per strongly connected group of files (Tarjan), written `a → b → … → a`. */
function cycles(edges: readonly Edge[]): string[] {
  const next = new Map<string, string[]>();
  for (const { from, to } of edges) {
    if (!next.has(from)) next.set(from, []);
    if (!next.has(to)) next.set(to, []);
    next.get(from)!.push(to);
  }
  let counter = 0;
  const index = new Map<string, number>();
  const low = new Map<string, number>();
  const stack: string[] = [];
  const onStack = new Set<string>();
  const found: string[] = [];

  const visit = (node: string) => {
    index.set(node, counter);
    low.set(node, counter);
    counter++;
    stack.push(node);
    onStack.add(node);
    for (const to of next.get(node)!) {
      if (!index.has(to)) {
        visit(to);
        low.set(node, Math.min(low.get(node)!, low.get(to)!));
      } else if (onStack.has(to)) {
        low.set(node, Math.min(low.get(node)!, index.get(to)!));
      }
    }
    if (low.get(node) !== index.get(node)) return;
    const members = new Set<string>();
    let member: string;
    do {
      member = stack.pop()!;
      onStack.delete(member);
      members.add(member);
    } while (member !== node);
    if (members.size > 1 || next.get(node)!.includes(node)) found.push(circleThrough(node, members, next));
  };
  for (const node of [...next.keys()].sort()) if (!index.has(node)) visit(node);
  return found;
}

/** A shortest path from `start` back to itself inside one strongly connected group. */
function circleThrough(start: string, members: ReadonlySet<string>, next: ReadonlyMap<string, string[]>): string {
  const cameFrom = new Map<string, string>();
  const queue = [start];
  while (queue.length > 0) {
    const node = queue.shift()!;
    for (const to of next.get(node)!) {
      if (!members.has(to)) continue;
      if (to === start) {
        const path = [start];
        for (let at = node; at !== start; at = cameFrom.get(at)!) path.unshift(at);
        path.unshift(start);
        return path.join(' → ');
      }
      if (!cameFrom.has(to)) {
        cameFrom.set(to, node);
        queue.push(to);
      }
    }
  }
  return start;
}

const files = sourceFiles(SRC);
const { edges, unresolved } = edgesOf(files);

t.test('the checker itself reports a circle and an upward import in a made-up tree', async (t) => {
  const layers: Layer[] = [
    { rank: 1, group: 'top', paths: ['top/'] },
    { rank: 0, group: 'low', paths: ['low/'] },
    { rank: 0, group: 'side', paths: ['side/'] },
  ];
  const made: Edge[] = [
    { from: 'top/a.ts', to: 'low/b.ts', specifier: '../low/b.js' },
    { from: 'low/b.ts', to: 'low/c.ts', specifier: './c.js' },
    { from: 'low/c.ts', to: 'top/a.ts', specifier: '../top/a.js' },
    { from: 'low/c.ts', to: 'side/d.ts', specifier: '../side/d.js' },
  ];
  t.same(cycles(made), ['low/b.ts → low/c.ts → top/a.ts → low/b.ts']);
  t.same(layerViolations(made, layers, []), [
    'low/c.ts → top/a.ts (low, rank 0 → top, rank 1)',
    'low/c.ts → side/d.ts (low, rank 0 → side, rank 0)',
  ]);
  t.same(layerViolations(made, layers, [{ from: 'low/c.ts', to: 'side/d.ts', why: 'example' }]), [
    'low/c.ts → top/a.ts (low, rank 0 → top, rank 1)',
  ]);
});

t.test('the checker reads every kind of import a module can make', async (t) => {
  const dir = mkdtempSync(path.join(tmpdir(), 'edgemqtt-imports-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const file = path.join(dir, 'module.ts');
  writeFileSync(
    file,
    [
      "import { a } from './static.js';",
      "import type { B } from '../type-only.js';",
      'import {',
      '  c,',
      "  d, // './not-a-specifier.js'",
      "} from './multi-line.js';",
      "export { e } from './re-export.js';",
      "export * from './star.js';",
      "const f = await import('./dynamic.js');",
      "import 'node:fs';",
      "// import { g } from './commented-out.js';",
    ].join('\n'),
  );
  t.same(specifiersOf(file).sort(), ['../type-only.js', './dynamic.js', './multi-line.js', './re-export.js', './star.js', './static.js']);
});

t.test('every source file was read and every relative import names a file', async (t) => {
  t.ok(files.length > 50, `${files.length} files under src/`);
  t.ok(edges.length > 100, `${edges.length} imports between them`);
  t.same(unresolved, [], 'imports that name no file');
});

t.test('every source file has its place in the layer table', async (t) => {
  t.same(
    files.map(relative).filter((file) => !layerOf(file)),
    [],
    'files outside every layer: add their folder to LAYERS in test/imports.test.ts',
  );
});

t.test('no import cycle', async (t) => {
  t.same(cycles(edges), [], 'each circle of imports, file by file');
});

t.test('imports go only downwards: own group, or a group of lower rank', async (t) => {
  t.same(layerViolations(edges, LAYERS, EXCEPTIONS), [], 'imports the layer table forbids');
});

t.test('every listed exception is still an import (remove the ones that are gone)', async (t) => {
  const stale = EXCEPTIONS.filter((e) => !edges.some((edge) => edge.from === e.from && edge.to === e.to));
  t.same(stale.map((e) => `${e.from} → ${e.to}`), []);
});
