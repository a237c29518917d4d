/**
 * Bytes the LevelDB store takes on disk: the sum of its files' sizes. The
 * store is one flat directory (SST files, logs, manifest), so one readdir and
 * a stat per file, at scrape or $SYS time only.
 */
import { readdir, stat } from 'node:fs/promises';
import path from 'node:path';

export async function directorySize(dir: string): Promise<number> {
  let entries;
  try {
    entries = await readdir(dir, { withFileTypes: true });
  } catch {
    // Not created yet (before start) or gone: nothing on disk.
    return 0;
  }
  const sizes = await Promise.all(
    entries
      .filter((entry) => entry.isFile())
      // A file compacted away between readdir and stat no longer counts.
      .map((entry) => stat(path.join(dir, entry.name)).then((info) => info.size, () => 0)),
  );
  return sizes.reduce((sum, size) => sum + size, 0);
}
