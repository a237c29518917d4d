/**
 * A CPU-busy sibling process: it competes with the broker and the test for
 * the machine's cores, as a gateway's other workloads do, which widens every
 * window between two steps of the broker. Killed by the test's teardown.
 */
import { spawn } from 'node:child_process';
import type { Test } from 'tap';

export function startBusySibling(t: Test): void {
  // Bounded by itself too (10 minutes) should the teardown never run.
  const child = spawn(process.execPath, ['-e', 'const end = Date.now() + 600_000; while (Date.now() < end);'], { stdio: 'ignore' });
  t.teardown(() => {
    child.kill('SIGKILL');
  });
}
