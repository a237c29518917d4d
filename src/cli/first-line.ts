/**
 * The first line of a file (a password or a token file, as `passwd` and
 * `ctl` read them), without its line end. An unreadable file becomes the
 * caller's error, `cannot read FILE (CODE)`.
 */
import { readFile } from 'node:fs/promises';

export function firstLine(text: string): string {
  const end = text.search(/\r?\n/);
  return end < 0 ? text : text.slice(0, end);
}

export async function readFirstLine(file: string, failure: (message: string) => Error): Promise<string> {
  let text: string;
  try {
    text = await readFile(file, 'utf8');
  } catch (error) {
    throw failure(`cannot read ${file} (${(error as NodeJS.ErrnoException).code ?? String(error)})`);
  }
  return firstLine(text);
}
