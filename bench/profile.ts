/**
 * Summarises a V8 .cpuprofile (from `node --cpu-prof`): where the broker's
 * CPU time went, by function (self and inclusive time) and by component
 * (aedes, mqtt-packet, mqemitter, Node streams, edgemqtt's own code, GC…).
 */
import { readFileSync } from 'node:fs';
import { pathToFileURL } from 'node:url';

interface CallFrame {
  functionName: string;
  url: string;
  lineNumber: number;
  columnNumber: number;
}

interface ProfileNode {
  id: number;
  callFrame: CallFrame;
  children?: number[];
}

interface CpuProfile {
  /** µs on the system's monotonic clock, the one process.hrtime reads (any process on the machine). */
  startTime: number;
  nodes: ProfileNode[];
  samples: number[];
  timeDeltas: number[];
}

/** Stages of the data path, by the function whose inclusive time measures each. */
const STAGES: Array<{ label: string; match: (frame: CallFrame) => boolean }> = [
  { label: 'read + parse (mqtt-packet Parser.parse)', match: (f) => f.functionName === 'parse' && f.url.endsWith('/mqtt-packet/parser.js') },
  { label: 'edgemqtt guards (protocol-guard code)', match: (f) => /\/protocol-guard\/[a-z0-9-]+\.js$/.test(f.url) },
  { label: 'aedes handlePublish (checks, authorizePublish)', match: (f) => f.functionName === 'handlePublish' && f.url.includes('/aedes/') },
  { label: 'aedes Aedes.publish (publish pipeline)', match: (f) => f.functionName === 'publish' && f.url.endsWith('/aedes/aedes.js') },
  { label: 'mqemitter _do (topic match + fan-out)', match: (f) => f.functionName === 'MQEmitter._do' || (f.functionName === '_do' && f.url.includes('/mqemitter/')) },
  { label: 'aedes deliverQoS0 (dedupe, authorizeForward)', match: (f) => f.functionName === 'deliverQoS0' && f.url.includes('/aedes/') },
  { label: 'aedes write (aedes/lib/write.js)', match: (f) => f.functionName === 'write' && f.url.endsWith('/aedes/lib/write.js') },
  { label: 'mqtt-packet writeToStream (serialise)', match: (f) => f.functionName === 'generate' && f.url.endsWith('/mqtt-packet/writeToStream.js') },
  { label: 'socket writev syscalls', match: (f) => f.url === '' && (f.functionName === 'writev' || f.functionName === 'writeBuffer') },
  { label: 'setImmediate dispatch (processImmediate)', match: (f) => f.functionName === 'processImmediate' },
  { label: 'garbage collector', match: (f) => f.functionName === '(garbage collector)' },
];

export interface ProfileSummary {
  /** Sampled time not idle, ms. */
  busyMs: number;
  stages: Array<{ label: string; ms: number }>;
  idleMs: number;
  byComponent: Array<{ name: string; ms: number }>;
  bySelf: Array<{ name: string; component: string; ms: number }>;
  byInclusive: Array<{ name: string; component: string; ms: number }>;
}

function shortUrl(url: string): string {
  const nm = url.lastIndexOf('/node_modules/');
  if (nm !== -1) return url.slice(nm + '/node_modules/'.length);
  const src = url.search(/\/(dist|dist-bench)\/(src|bench)\//);
  if (src !== -1) return url.slice(src + 1);
  return url.replace(/^file:\/\//, '');
}

export function componentOf(frame: CallFrame): string {
  const { url, functionName } = frame;
  if (functionName === '(garbage collector)') return 'GC';
  if (functionName === '(program)') return 'V8/libuv outside JS (program)';
  if (functionName === '(idle)') return 'idle';
  if (functionName === '(root)') return 'root';
  if (url === '') return functionName === 'writev' || functionName === 'writeBuffer' ? 'socket write syscalls (writev/writeBuffer)' : 'native built-ins & bindings';
  if (url.includes('/mqtt-packet/parser.js') || url.includes('/bl/')) return 'mqtt-packet parser (+ bl)';
  if (/\/mqtt-packet\/(writeToStream|generate|numbers)\.js/.test(url)) return 'mqtt-packet writer';
  const nm = url.lastIndexOf('/node_modules/');
  if (nm !== -1) {
    const rest = url.slice(nm + '/node_modules/'.length).split('/');
    return rest[0]?.startsWith('@') ? `${rest[0]}/${rest[1]}` : (rest[0] ?? url);
  }
  if (/\/src\/broker\/protocol-guard\/[a-z0-9-]+\.js$/.test(url)) return 'edgemqtt guards (protocol, packet size)';
  if (/\/src\/broker\/(flow-control|delivery-rules|aedes-seam\/[a-z0-9-]+)\.js$/.test(url)) return 'edgemqtt delivery wrappers (flow control, delivery rules, aedes seam)';
  if (/\/(dist|dist-bench)\/src\//.test(url)) return 'edgemqtt (other)';
  if (url.includes('/bench/')) return 'bench harness';
  if (url.startsWith('node:')) {
    const module = url.slice('node:'.length).replace(/^internal\//, '');
    if (module.startsWith('streams/') || module === 'stream') return 'node streams';
    if (module === 'net' || module.startsWith('stream_base') || module === 'dgram') return 'node net/stream_base';
    if (module.startsWith('timers') || module === 'process/task_queues') return 'node timers/immediates/nextTick';
    if (module === 'events') return 'node events';
    if (module === 'buffer' || module === 'util') return 'node buffer/util';
    return 'node core (other)';
  }
  return 'other';
}

function frameName(frame: CallFrame): string {
  const name = frame.functionName || '(anonymous)';
  if (frame.url === '') return name;
  return `${name} ${shortUrl(frame.url)}:${frame.lineNumber + 1}`;
}

/**
 * With `window` (µs, as `process.hrtime.bigint() / 1000n` reads it in any
 * process on this machine), only the samples taken in it count: a benchmark's
 * measured phase without the broker's start-up and shutdown.
 */
export function summarizeProfile(file: string, window?: { fromUs: number; toUs: number }): ProfileSummary {
  const profile = JSON.parse(readFileSync(file, 'utf8')) as CpuProfile;
  const byId = new Map<number, ProfileNode>();
  const parent = new Map<number, number>();
  for (const node of profile.nodes) {
    byId.set(node.id, node);
    for (const child of node.children ?? []) parent.set(child, node.id);
  }
  const self = new Map<string, { component: string; us: number }>();
  const inclusive = new Map<string, { component: string; us: number }>();
  const components = new Map<string, number>();
  const stages = STAGES.map(() => 0);
  let busy = 0;
  let idle = 0;
  let at = profile.startTime;
  for (let i = 0; i < profile.samples.length; i++) {
    at += profile.timeDeltas[i] ?? 0;
    if (window && (at < window.fromUs || at > window.toUs)) continue;
    // A sample's time is the interval until the next sample.
    const us = profile.timeDeltas[i + 1] ?? 0;
    const node = byId.get(profile.samples[i] as number);
    if (!node) continue;
    const component = componentOf(node.callFrame);
    if (component === 'idle') {
      idle += us;
      continue;
    }
    busy += us;
    components.set(component, (components.get(component) ?? 0) + us);
    const name = frameName(node.callFrame);
    const entry = self.get(name) ?? { component, us: 0 };
    entry.us += us;
    self.set(name, entry);
    const seen = new Set<string>();
    const stageSeen = STAGES.map(() => false);
    for (let id: number | undefined = node.id; id !== undefined; id = parent.get(id)) {
      const frame = (byId.get(id) as ProfileNode).callFrame;
      if (frame.functionName === '(root)') break;
      STAGES.forEach((stage, index) => {
        if (!stageSeen[index] && stage.match(frame)) {
          stageSeen[index] = true;
          stages[index] = (stages[index] ?? 0) + us;
        }
      });
      const key = frameName(frame);
      if (seen.has(key)) continue;
      seen.add(key);
      const total = inclusive.get(key) ?? { component: componentOf(frame), us: 0 };
      total.us += us;
      inclusive.set(key, total);
    }
  }
  const sorted = (map: Map<string, { component: string; us: number }>) =>
    [...map.entries()]
      .map(([name, { component, us }]) => ({ name, component, ms: us / 1000 }))
      .sort((a, b) => b.ms - a.ms);
  return {
    busyMs: busy / 1000,
    idleMs: idle / 1000,
    stages: STAGES.map((stage, index) => ({ label: stage.label, ms: (stages[index] ?? 0) / 1000 })),
    byComponent: [...components.entries()].map(([name, us]) => ({ name, ms: us / 1000 })).sort((a, b) => b.ms - a.ms),
    bySelf: sorted(self),
    byInclusive: sorted(inclusive),
  };
}

export function formatProfile(summary: ProfileSummary, top = 30): string {
  const pct = (ms: number) => `${((ms / summary.busyMs) * 100).toFixed(1).padStart(5)}%`;
  const lines: string[] = [];
  lines.push(`busy ${summary.busyMs.toFixed(0)} ms sampled (idle ${summary.idleMs.toFixed(0)} ms not counted); % of busy time`);
  lines.push('', 'data-path stages, inclusive (stages nest: writev runs inside processImmediate, parse inside a read):');
  for (const { label, ms } of summary.stages) lines.push(`  ${pct(ms)}  ${label}`);
  lines.push('', 'self time by component:');
  for (const { name, ms } of summary.byComponent) lines.push(`  ${pct(ms)}  ${name}`);
  lines.push('', `top ${top} functions by self time:`);
  for (const { name, component, ms } of summary.bySelf.slice(0, top)) lines.push(`  ${pct(ms)}  ${name}  [${component}]`);
  lines.push('', `top ${top} functions by inclusive time (self + callees):`);
  for (const { name, component, ms } of summary.byInclusive.slice(0, top)) lines.push(`  ${pct(ms)}  ${name}  [${component}]`);
  return lines.join('\n');
}

// `node dist-bench/bench/profile.js FILE.cpuprofile [TOP [FROM_US TO_US]]` summarises a saved profile (FROM/TO: a window, see summarizeProfile).
if (process.argv[1] && import.meta.url === pathToFileURL(process.argv[1]).href) {
  const file = process.argv[2];
  if (!file) {
    console.error('usage: node dist-bench/bench/profile.js FILE.cpuprofile [TOP]');
    process.exit(2);
  }
  const [from, to] = [process.argv[4], process.argv[5]].map(Number);
  const window = from !== undefined && to !== undefined && Number.isFinite(from) && Number.isFinite(to) ? { fromUs: from, toUs: to } : undefined;
  console.log(formatProfile(summarizeProfile(file, window), Number(process.argv[3] ?? 30)));
}
