/**
 * The dashboard's files: a fixed list, read from the package on first use and
 * kept in memory with their ETag and a gzip copy.
 *
 * Only names in ASSETS are ever served; a request path is looked up in that
 * table and never joined onto a directory, so `..`, encoded slashes and the
 * like cannot reach any other file.
 */
import { createHash } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import { createRequire } from 'node:module';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { gzip } from 'node:zlib';

const gzipAsync = promisify(gzip);

/** The page and its modules: `web/` at the package root (src/dashboard and dist/dashboard are both two levels down). */
const WEB_DIR = new URL('../../web/', import.meta.url);

/** The mqtt.js browser build (an ES module), from the `mqtt` dependency: nothing is fetched from a CDN. */
const MQTT_BROWSER_BUILD = createRequire(import.meta.url).resolve('mqtt/dist/mqtt.esm');

const JS = 'text/javascript; charset=utf-8';

export interface AssetSource {
  /** Absolute path of the file. */
  file: string;
  contentType: string;
}

/** URL path → file. The page at `/`; everything it loads under /dashboard/. */
export const ASSETS: ReadonlyMap<string, AssetSource> = new Map([
  ['/', web('index.html', 'text/html; charset=utf-8')],
  ['/dashboard/dashboard.css', web('dashboard.css', 'text/css; charset=utf-8')],
  ['/dashboard/icon.svg', web('icon.svg', 'image/svg+xml')],
  ['/dashboard/main.js', web('main.js', JS)],
  ['/dashboard/connection.js', web('connection.js', JS)],
  ['/dashboard/topic-tree.js', web('topic-tree.js', JS)],
  ['/dashboard/topic-table.js', web('topic-table.js', JS)],
  ['/dashboard/charts.js', web('charts.js', JS)],
  ['/dashboard/clients.js', web('clients.js', JS)],
  ['/dashboard/health.js', web('health.js', JS)],
  ['/dashboard/format.js', web('format.js', JS)],
  ['/dashboard/mqtt.esm.js', { file: MQTT_BROWSER_BUILD, contentType: JS }],
]);

function web(name: string, contentType: string): AssetSource {
  return { file: fileURLToPath(new URL(name, WEB_DIR)), contentType };
}

export interface Asset {
  contentType: string;
  body: Buffer;
  /** Strong validator of `body` (RFC 9110 §8.8.3). */
  etag: string;
  /** The same bytes gzipped, when that is smaller (the mqtt.js build: ~340 KB → ~100 KB). */
  gzip?: { body: Buffer; etag: string };
}

/** Under this size gzip saves less than its own header and a round of CPU. */
const GZIP_MIN_BYTES = 1024;

/**
 * Reads one asset and prepares it for serving. `transform` edits the text
 * before hashing (the page gets the WebSocket path written into it).
 */
export async function loadAsset(source: AssetSource, transform?: (text: string) => string): Promise<Asset> {
  let body = await readFile(source.file);
  if (transform) body = Buffer.from(transform(body.toString('utf8')), 'utf8');
  const hash = createHash('sha256').update(body).digest('base64url').slice(0, 22);
  const asset: Asset = { contentType: source.contentType, body, etag: `"${hash}"` };
  if (body.length >= GZIP_MIN_BYTES) {
    const zipped = await gzipAsync(body);
    // A different representation needs its own validator.
    if (zipped.length < body.length) asset.gzip = { body: zipped, etag: `"${hash}-gz"` };
  }
  return asset;
}
