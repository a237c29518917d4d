/**
 * The dashboard's files as the daemon serves them, over plain HTTP: each with
 * its content type and the security headers, validators and gzip, GET/HEAD
 * only, nothing outside the fixed list (traversal attempts get 404), the
 * WebSocket path written into the page, and nothing at all when
 * `dashboard.enabled` is false. The page itself is tested in Chromium in
 * dashboard.test.ts.
 */
import t from 'tap';
import { request } from 'node:http';
import { readdirSync, readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { gunzipSync } from 'node:zlib';
import { ASSETS } from '../src/dashboard/assets.js';
import { startDaemon } from './helpers/daemon.js';

interface Reply {
  status: number;
  headers: Record<string, string | string[] | undefined>;
  body: Buffer;
}

/** One request with the path sent exactly as given (fetch would normalize `..` first). */
function send(httpPort: number, rawPath: string, options: { method?: string; headers?: Record<string, string> } = {}): Promise<Reply> {
  return new Promise((resolve, reject) => {
    const req = request({ host: '127.0.0.1', port: httpPort, path: rawPath, method: options.method ?? 'GET', headers: options.headers ?? {} }, (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (chunk: Buffer) => chunks.push(chunk));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, headers: res.headers, body: Buffer.concat(chunks) }));
      res.on('error', reject);
    });
    req.on('error', reject);
    req.end();
  });
}

const MQTT_BROWSER_BUILD = createRequire(import.meta.url).resolve('mqtt/dist/mqtt.esm');
const PACKAGE_JSON = readFileSync(new URL('../package.json', import.meta.url), 'utf8');

t.test('the page and each of its files are served with their type and the security headers', async (t) => {
  const { httpPort } = await startDaemon(t);
  const expectedTypes: Record<string, RegExp> = {
    '/': /^text\/html; charset=utf-8$/,
    '/dashboard/dashboard.css': /^text\/css; charset=utf-8$/,
    '/dashboard/icon.svg': /^image\/svg\+xml$/,
    '/dashboard/main.js': /^text\/javascript; charset=utf-8$/,
    '/dashboard/mqtt.esm.js': /^text\/javascript; charset=utf-8$/,
  };
  for (const path of ASSETS.keys()) {
    const reply = await send(httpPort, path);
    t.equal(reply.status, 200, `${path} is served`);
    t.ok(reply.body.length > 0, `${path} has a body`);
    t.match(reply.headers['content-type'], expectedTypes[path] ?? /^text\/javascript; charset=utf-8$/, `${path} has its content type`);
    t.equal(reply.headers['x-content-type-options'], 'nosniff', `${path}: nosniff`);
    t.equal(reply.headers['cache-control'], 'no-cache', `${path}: revalidated before reuse`);
    t.match(reply.headers.etag, /^"[A-Za-z0-9_-]+"$/, `${path} has a strong ETag`);
    const csp = String(reply.headers['content-security-policy']);
    t.match(csp, /default-src 'none'/, `${path}: CSP denies by default`);
    t.match(csp, /script-src 'self';/, `${path}: scripts only from the daemon`);
    t.match(csp, new RegExp(`connect-src 'self' ws://127\\.0\\.0\\.1:${httpPort};`), `${path}: network only to the daemon and its WebSocket`);
    t.notMatch(csp, /unsafe-inline|unsafe-eval/, `${path}: no inline script or eval`);
    t.match(csp, /frame-ancestors 'none'/, `${path}: not framed`);
  }
  const page = (await send(httpPort, '/')).body.toString('utf8');
  t.notMatch(page, /<script>|<script [^>]*>[^<]/, 'the page has no inline script');
  t.notMatch(page, /https?:\/\//, 'the page names no other site');
});

t.test('a Host header is written into the CSP only when it is a plain host and port', async (t) => {
  const { httpPort } = await startDaemon(t);
  const csp = async (host: string) => String((await send(httpPort, '/', { headers: { Host: host } })).headers['content-security-policy']);
  t.match(await csp('gateway.local:8080'), "connect-src 'self' ws://gateway.local:8080;");
  t.match(await csp('[::1]:8080'), "connect-src 'self' ws://[::1]:8080;");
  for (const hostile of ["gateway; script-src 'unsafe-inline'", 'gateway:8080 https://evil.example', 'a,b']) {
    const policy = await csp(hostile);
    t.match(policy, "connect-src 'self';", `${JSON.stringify(hostile)}: only 'self'`);
    t.notMatch(policy, /unsafe-inline|evil/, 'nothing of it in the policy');
  }
});

t.test('mqtt.js comes from the installed mqtt package, gzipped for browsers that take it', async (t) => {
  const { httpPort } = await startDaemon(t);
  const original = readFileSync(MQTT_BROWSER_BUILD);
  const plain = await send(httpPort, '/dashboard/mqtt.esm.js');
  t.ok(plain.body.equals(original), 'the bytes of node_modules/mqtt/dist/mqtt.esm.js');
  t.equal(plain.headers['content-encoding'], undefined, 'not compressed unless asked');
  const zipped = await send(httpPort, '/dashboard/mqtt.esm.js', { headers: { 'Accept-Encoding': 'gzip, deflate, br' } });
  t.equal(zipped.headers['content-encoding'], 'gzip');
  t.equal(zipped.headers.vary, 'Accept-Encoding');
  t.ok(gunzipSync(zipped.body).equals(original), 'the same bytes once unzipped');
  t.ok(zipped.body.length < original.length / 2, `smaller on the wire: ${zipped.body.length} of ${original.length} bytes`);
  t.not(zipped.headers.etag, plain.headers.etag, 'each representation has its own ETag');
  const refused = await send(httpPort, '/dashboard/mqtt.esm.js', { headers: { 'Accept-Encoding': 'gzip;q=0' } });
  t.equal(refused.headers['content-encoding'], undefined, 'gzip;q=0 means not gzip');
});

t.test('a cached copy is confirmed with 304; HEAD has the headers but no body', async (t) => {
  const { httpPort } = await startDaemon(t);
  const first = await send(httpPort, '/dashboard/main.js');
  const etag = String(first.headers.etag);
  const again = await send(httpPort, '/dashboard/main.js', { headers: { 'If-None-Match': etag } });
  t.equal(again.status, 304);
  t.equal(again.body.length, 0);
  t.equal(again.headers.etag, etag);
  const changed = await send(httpPort, '/dashboard/main.js', { headers: { 'If-None-Match': '"something-else"' } });
  t.equal(changed.status, 200, 'another ETag gets the file');

  const head = await send(httpPort, '/', { method: 'HEAD' });
  t.equal(head.status, 200);
  t.equal(head.body.length, 0, 'no body');
  t.equal(Number(head.headers['content-length']), (await send(httpPort, '/')).body.length, 'the length GET would send');
  t.ok(head.headers['content-security-policy'], 'and the same headers');
});

t.test('only GET and HEAD', async (t) => {
  const { httpPort } = await startDaemon(t);
  for (const method of ['POST', 'PUT', 'DELETE', 'OPTIONS']) {
    for (const path of ['/', '/dashboard/main.js']) {
      const reply = await send(httpPort, path, { method });
      t.equal(reply.status, 405, `${method} ${path} → 405`);
      t.equal(reply.headers.allow, 'GET, HEAD');
    }
  }
});

t.test('no path reaches a file outside the dashboard list', async (t) => {
  const { httpPort } = await startDaemon(t);
  const attempts = [
    '/..%2f..%2fpackage.json',
    '/../../package.json',
    '/dashboard/../../package.json',
    '/dashboard/..%2f..%2fpackage.json',
    '/dashboard/%2e%2e/%2e%2e/package.json',
    '/dashboard/%2e%2e%2f%2e%2e%2fpackage.json',
    '/dashboard/..\\..\\package.json',
    '/dashboard/main.js%00.json',
    '/dashboard/main.js/',
    '/dashboard//main.js',
    '/dashboard/',
    '/dashboard',
    '/dashboard/mqtt.esm.d.ts',
    '/dashboard/index.html',
    '/package.json',
    '/web/main.js',
    '//etc/passwd',
    '/%2fetc%2fpasswd',
    '/index.html/..%2f..%2fpackage.json',
  ];
  for (const path of attempts) {
    const reply = await send(httpPort, path);
    t.equal(reply.status, 404, `${path} → 404`);
    t.notOk(reply.body.toString('utf8').includes('"name": "edgemqtt"'), `${path} does not show package.json`);
    t.notOk(reply.body.toString('utf8').includes(PACKAGE_JSON.slice(0, 40)), `${path} shows no file of the package`);
  }
  t.equal((await send(httpPort, '/?next=..%2f..%2fpackage.json')).status, 200, 'a query string is no path: the page');
});

t.test('every module the page loads is in the list the daemon serves', async (t) => {
  // A module added to web/ but not to ASSETS would load in development and fail on the gateway.
  const { httpPort } = await startDaemon(t);
  const webDir = new URL('../web/', import.meta.url);
  const imported = new Set<string>();
  for (const name of readdirSync(webDir).filter((file) => file.endsWith('.js'))) {
    const text = readFileSync(new URL(name, webDir), 'utf8');
    for (const match of text.matchAll(/^import [^;]*? from '\.\/([\w.-]+)';$/gm)) imported.add(match[1] ?? '');
  }
  const page = (await send(httpPort, '/')).body.toString('utf8');
  for (const match of page.matchAll(/(?:src|href)="\/dashboard\/([\w.-]+)"/g)) imported.add(match[1] ?? '');
  t.ok(imported.has('mqtt.esm.js') && imported.has('main.js') && imported.has('dashboard.css'), `found the page's references: ${[...imported].join(', ')}`);
  for (const name of imported) t.equal((await send(httpPort, `/dashboard/${name}`)).status, 200, `/dashboard/${name} is served`);
});

t.test('the page is told the WebSocket path, or that MQTT over WebSocket is off', async (t) => {
  const custom = await startDaemon(t, { http: { websocket: { path: '/ws/mqtt' } } });
  t.match((await send(custom.httpPort, '/')).body.toString('utf8'), '<meta name="edgemqtt-websocket-path" content="/ws/mqtt">');
  const off = await startDaemon(t, { http: { websocket: { enabled: false } } });
  t.match((await send(off.httpPort, '/')).body.toString('utf8'), '<meta name="edgemqtt-websocket-path" content="">');
});

t.test('dashboard.enabled: false serves none of it', async (t) => {
  const { httpPort } = await startDaemon(t, { dashboard: { enabled: false } });
  for (const path of ASSETS.keys()) t.equal((await send(httpPort, path)).status, 404, `${path} → 404`);
  t.equal((await send(httpPort, '/healthz')).status, 200, 'the listener still answers the rest');
});
