/**
 * Opens the LevelDB directory, turning every way that can fail into one clear
 * error (locked, corrupt, unreadable), and refusing the one failure LevelDB
 * would hide: with CURRENT gone, `createIfMissing` would start an empty store
 * next to the old files, silently losing every session and retained message.
 */
import { readdir } from 'node:fs/promises';
import { Level } from 'level';
import { classifyStoreError, StoreCorruptError, StoreUnreadableError } from './errors.js';

export type Store = Level<Buffer, Buffer>;

// Files LevelDB writes besides CURRENT, LOCK and LOG: manifests, tables, write-ahead logs.
const STORE_FILE = /^(MANIFEST-\d+|\d+\.(ldb|sst|log))$/;

export async function openStore(location: string): Promise<Store> {
  await refuseOrphanedFiles(location);
  const db = new Level<Buffer, Buffer>(location, { keyEncoding: 'buffer', valueEncoding: 'buffer' });
  try {
    await db.open({ createIfMissing: true });
  } catch (error) {
    throw classifyStoreError(location, error);
  }
  return db;
}

async function refuseOrphanedFiles(location: string): Promise<void> {
  let names: string[];
  try {
    names = await readdir(location);
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === 'ENOENT') return;
    throw new StoreUnreadableError(location, error);
  }
  if (names.includes('CURRENT')) return;
  const orphans = names.filter((name) => STORE_FILE.test(name));
  if (orphans.length > 0) {
    throw new StoreCorruptError(location, `CURRENT is missing but ${orphans.slice(0, 3).join(', ')} exist`);
  }
}
