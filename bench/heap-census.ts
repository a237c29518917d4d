/**
 * Heap census: what an idle connection keeps on edgemqtt's JavaScript heap,
 * by constructor. Starts the daemon as the CLI runs it (idle-clients.ts),
 * writes a heap snapshot when idle, after N idle TCP clients and after N more
 * idle WebSocket clients (`--heapsnapshot-signal`; a snapshot collects
 * garbage first, so it counts only what is live), and prints for each step the
 * constructors whose count or shallow size grew the most, per connection.
 *
 * Closures are named by their source line, internal arrays by the object
 * holding them. Shallow sizes sum to the heap's growth; the V8 heap the process keeps
 * beyond its live objects is what memory.ts's RSS figures add on top.
 *
 * Usage: npm run bench:build && node dist-bench/bench/heap-census.js
 *   BENCH_MEMORY_CONNECTIONS=1000 (per transport)  BENCH_CENSUS_TOP=25
 */
import { readdirSync, readFileSync } from 'node:fs';
import type { Socket } from 'node:net';
import path from 'node:path';
import { benchWorkspace } from './brokers.js';
import { openClients, startEdgemqttCli } from './idle-clients.js';

const CONNECTIONS = Number(process.env.BENCH_MEMORY_CONNECTIONS ?? 1000);
const TOP = Number(process.env.BENCH_CENSUS_TOP ?? 25);

interface Entry {
  count: number;
  bytes: number;
}
type Census = Map<string, Entry>;

interface SnapshotFile {
  snapshot: {
    meta: { node_fields: string[]; node_types: [string[], ...unknown[]]; edge_fields: string[]; edge_types: [string[], ...unknown[]]; location_fields: string[] };
  };
  nodes: number[];
  edges: number[];
  locations: number[];
  strings: string[];
}

/** "file:line" of each closure node (by node offset), from the snapshot's locations and its script edges. */
function closureSources(data: SnapshotFile): Map<number, string> {
  const nodeFields = data.snapshot.meta.node_fields;
  const width = nodeFields.length;
  const edgeWidth = data.snapshot.meta.edge_fields.length;
  const [edgeCountAt, nameAt] = [nodeFields.indexOf('edge_count'), nodeFields.indexOf('name')];
  const [edgeNameAt, edgeToAt] = [data.snapshot.meta.edge_fields.indexOf('name_or_index'), data.snapshot.meta.edge_fields.indexOf('to_node')];
  const firstEdge = new Map<number, number>();
  for (let i = 0, edge = 0; i < data.nodes.length; i += width) {
    firstEdge.set(i, edge);
    edge += data.nodes[i + edgeCountAt]! * edgeWidth;
  }
  const edgeTo = (node: number, name: string): number | undefined => {
    const start = firstEdge.get(node)!;
    const end = start + data.nodes[node + edgeCountAt]! * edgeWidth;
    for (let e = start; e < end; e += edgeWidth) if (data.strings[data.edges[e + edgeNameAt]!] === name) return data.edges[e + edgeToAt];
    return undefined;
  };
  const result = new Map<number, string>();
  const locWidth = data.snapshot.meta.location_fields.length;
  for (let l = 0; l < data.locations.length; l += locWidth) {
    const node = data.locations[l]!;
    const line = data.locations[l + 2]! + 1;
    const shared = edgeTo(node, 'shared');
    const script = shared === undefined ? undefined : (edgeTo(shared, 'script') ?? edgeTo(shared, 'script_or_debug_info'));
    const scriptName = script === undefined ? undefined : edgeTo(script, 'name');
    const file = scriptName === undefined ? '?' : data.strings[data.nodes[scriptName + nameAt]!]!.replace(/^.*\/(node_modules|dist)\//, '');
    result.set(node, `${file}:${line}`);
  }
  return result;
}

/**
 * For internal arrays (property and element stores, listener lists), which
 * would all be "array:" otherwise: "array of Owner.edge", from the first
 * object that refers to each.
 */
function arrayOwners(data: SnapshotFile): Map<number, string> {
  const nodeFields = data.snapshot.meta.node_fields;
  const width = nodeFields.length;
  const edgeFields = data.snapshot.meta.edge_fields;
  const edgeWidth = edgeFields.length;
  const [typeAt, nameAt, edgeCountAt] = [nodeFields.indexOf('type'), nodeFields.indexOf('name'), nodeFields.indexOf('edge_count')];
  const [edgeTypeAt, edgeNameAt, edgeToAt] = [edgeFields.indexOf('type'), edgeFields.indexOf('name_or_index'), edgeFields.indexOf('to_node')];
  const types = data.snapshot.meta.node_types[0];
  const edgeTypes = data.snapshot.meta.edge_types[0];
  const result = new Map<number, string>();
  for (let i = 0, edge = 0; i < data.nodes.length; i += width) {
    const ownerType = types[data.nodes[i + typeAt]!]!;
    const owner = ownerType === 'object' || ownerType === 'closure' ? data.strings[data.nodes[i + nameAt]!]! : ownerType;
    const end = edge + data.nodes[i + edgeCountAt]! * edgeWidth;
    for (; edge < end; edge += edgeWidth) {
      const to = data.edges[edge + edgeToAt]!;
      if (types[data.nodes[to + typeAt]!] !== 'array' || result.has(to)) continue;
      const edgeType = edgeTypes[data.edges[edge + edgeTypeAt]!];
      const edgeName = edgeType === 'element' || edgeType === 'hidden' ? '[]' : data.strings[data.edges[edge + edgeNameAt]!];
      result.set(to, `array of ${owner}.${edgeName}`);
    }
  }
  return result;
}

/** Counts and shallow sizes per "type:name" (constructor for objects, function name for closures). */
function census(file: string): Census {
  const data = JSON.parse(readFileSync(file, 'utf8')) as SnapshotFile;
  const fields = data.snapshot.meta.node_fields;
  const types = data.snapshot.meta.node_types[0];
  const width = fields.length;
  const [typeAt, nameAt, sizeAt] = [fields.indexOf('type'), fields.indexOf('name'), fields.indexOf('self_size')];
  const sources = closureSources(data);
  const owners = arrayOwners(data);
  const result: Census = new Map();
  for (let i = 0; i < data.nodes.length; i += width) {
    const type = types[data.nodes[i + typeAt]!]!;
    // Strings and numbers by type only: their "names" are their contents.
    const name = type === 'object' || type === 'closure' || type === 'native' ? data.strings[data.nodes[i + nameAt]!]! : '';
    const key = type === 'closure' ? `closure:${name} ${sources.get(i) ?? ''}` : type === 'array' ? (owners.get(i) ?? 'array:') : `${type}:${name}`;
    const entry = result.get(key) ?? { count: 0, bytes: 0 };
    entry.count++;
    entry.bytes += data.nodes[i + sizeAt]!;
    result.set(key, entry);
  }
  return result;
}

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

/** Signals the daemon and waits for its new snapshot file to be complete. */
async function snapshot(pid: number, dir: string, taken: Set<string>): Promise<string> {
  process.kill(pid, 'SIGUSR2');
  const deadline = Date.now() + 120_000;
  for (;;) {
    const fresh = readdirSync(dir).filter((name) => name.endsWith('.heapsnapshot') && !taken.has(name));
    if (fresh.length > 0) {
      const file = path.join(dir, fresh[0]!);
      // Written in one go; complete once it parses.
      try {
        JSON.parse(readFileSync(file, 'utf8'));
        taken.add(fresh[0]!);
        return file;
      } catch {
        /* still being written */
      }
    }
    if (Date.now() > deadline) throw new Error('no heap snapshot within 120 s');
    await sleep(500);
  }
}

function printDiff(title: string, before: Census, after: Census, per: number): void {
  const total = (c: Census) => [...c.values()].reduce((sum, e) => sum + e.bytes, 0);
  const rows = [...after.entries()]
    .map(([key, entry]) => {
      const was = before.get(key) ?? { count: 0, bytes: 0 };
      return { key, count: (entry.count - was.count) / per, bytes: (entry.bytes - was.bytes) / per };
    })
    .sort((a, b) => b.bytes - a.bytes)
    .slice(0, TOP);
  // Compiled code grows as the JIT warms up, not with connections.
  const code = ((after.get('code:')?.bytes ?? 0) - (before.get('code:')?.bytes ?? 0)) / per;
  const heap = (total(after) - total(before)) / per;
  console.log(`${title}: live heap ${(heap / 1024).toFixed(1)} KB per connection, ${((heap - code) / 1024).toFixed(1)} KB without compiled code`);
  console.log('  bytes/conn  count/conn  type:name');
  for (const row of rows) console.log(`  ${row.bytes.toFixed(0).padStart(10)}  ${row.count.toFixed(2).padStart(10)}  ${row.key}`);
}

async function main(dir: string): Promise<void> {
  const target = await startEdgemqttCli(dir, ['--heapsnapshot-signal=SIGUSR2']);
  const open: Socket[] = [];
  const taken = new Set<string>();
  try {
    await sleep(2000);
    const idle = census(await snapshot(target.pid, dir, taken));
    open.push(...(await openClients(target, 'tcp', CONNECTIONS, 0)));
    await sleep(2000);
    const tcp = census(await snapshot(target.pid, dir, taken));
    open.push(...(await openClients(target, 'ws', CONNECTIONS, 0)));
    await sleep(2000);
    const ws = census(await snapshot(target.pid, dir, taken));
    console.log(`heap census: ${CONNECTIONS} idle clients per transport, node ${process.version}`);
    printDiff(`+${CONNECTIONS} TCP`, idle, tcp, CONNECTIONS);
    printDiff(`+${CONNECTIONS} WebSocket`, tcp, ws, CONNECTIONS);
  } finally {
    for (const socket of open) socket.destroy();
    await target.stop();
  }
}

// The daemon is stopped and the temp dir removed on the way out, also after an error or on SIGINT/SIGTERM.
const { tempDir, cleanup } = benchWorkspace('edgemqtt-bench-census-');
main(tempDir)
  .catch((error: unknown) => {
    console.error('heap census failed:', error);
    process.exitCode = 1;
  })
  .finally(cleanup);
