/**
 * The live dashboard in a real headless Chromium against a real daemon: the
 * page loads from the daemon alone (no request leaves its origin), logs in
 * over MQTT over WebSocket like any client, shows what a TCP client
 * publishes within a second with its retain flag, filters the topic tree,
 * refuses a wrong login clearly, says when the admin API is off or refuses,
 * and its Disconnect button really disconnects a client. A screenshot is
 * saved as test-output/dashboard.png.
 *
 * Needs Chromium at /usr/bin/chromium (or EDGEMQTT_CHROMIUM); fails, never skips, without it.
 */
import t, { type Test } from 'tap';
import { existsSync } from 'node:fs';
import { mkdir, writeFile } from 'node:fs/promises';
import path from 'node:path';
import type { Page } from 'playwright-core';
import { hashPassword } from '../src/auth/password-file.js';
import { CHROMIUM, sharedBrowser } from './helpers/chromium.js';
import { startDaemon, tempDir } from './helpers/daemon.js';
import { connectClient, eventually } from './helpers/mqtt.js';
import { NatsServer, natsUnavailable } from './helpers/nats.js';

/** Bound on waits for the page to start and connect; generous because the machine is shared. */
const PAGE_TIMEOUT_MS = 15_000;
/** The promise: a message shows within a second of its publish. */
const SHOWN_WITHIN_MS = 1000;
const SCREENSHOT = new URL('../test-output/dashboard.png', import.meta.url);

const browser = sharedBrowser();

interface OpenPage {
  page: Page;
  /** Every URL the page requested over HTTP, and the WebSockets it opened and closed. */
  requests: string[];
  websockets: string[];
  closedWebsockets: string[];
  /**
   * Uncaught errors in the page, console errors (a CSP violation is one) and
   * failed loads of the page's own files. The admin API's answers are the
   * tests' business: Chromium logs each 4xx of a fetch, so those are left out.
   */
  errors: string[];
}

async function openPage(t: Test, httpUrl: string): Promise<OpenPage> {
  const context = await (await browser.get()).newContext({ viewport: { width: 1280, height: 900 } });
  t.teardown(() => context.close());
  const page = await context.newPage();
  const opened: OpenPage = { page, requests: [], websockets: [], closedWebsockets: [], errors: [] };
  page.on('request', (request) => opened.requests.push(request.url()));
  page.on('websocket', (ws) => {
    opened.websockets.push(ws.url());
    ws.on('close', () => opened.closedWebsockets.push(ws.url()));
  });
  page.on('pageerror', (error) => opened.errors.push(`page error: ${error.message}`));
  page.on('console', (message) => {
    if (message.type() === 'error' && !message.text().startsWith('Failed to load resource')) opened.errors.push(`console: ${message.text()}`);
  });
  page.on('response', (response) => {
    if (response.status() >= 400 && !new URL(response.url()).pathname.startsWith('/api/')) opened.errors.push(`${response.status()} for ${response.url()}`);
  });
  await page.goto(httpUrl, { timeout: PAGE_TIMEOUT_MS });
  return opened;
}

/**
 * Fills the login form and waits until the page is connected and subscribed;
 * then, unless `watch` is false, has the topic tree watch `#` and waits for the SUBACK.
 */
async function logIn(page: Page, user = '', password = '', watch = true): Promise<void> {
  await page.getByLabel('User name').fill(user);
  await page.getByLabel('Password').fill(password);
  await page.getByRole('button', { name: 'Connect' }).click();
  await page.locator('#status[data-state="connected"]').waitFor({ timeout: PAGE_TIMEOUT_MS });
  if (watch) await watchTopics(page);
}

/** Presses Watch and waits until the broker answered the subscription (granted: on; refused: off). */
async function watchTopics(page: Page): Promise<void> {
  await page.getByRole('button', { name: 'Watch', exact: true }).click();
  await page.locator('#watch:not([data-watching="pending"])').waitFor({ timeout: PAGE_TIMEOUT_MS });
}

/** The topic rows shown, in order, but the broker's own under $SYS. */
async function shownTopics(page: Page): Promise<string[]> {
  const topics = await page.locator('#topics-body tr').evaluateAll((rows) => rows.map((row) => row.getAttribute('data-topic') ?? ''));
  return topics.filter((topic) => topic !== '$SYS' && !topic.startsWith('$SYS/'));
}

async function passwordFile(t: Test, users: Record<string, string>): Promise<string> {
  const file = path.join(tempDir(t), 'passwd');
  const lines = await Promise.all(Object.entries(users).map(async ([user, password]) => `${user}:${await hashPassword(password)}`));
  await writeFile(file, `${lines.join('\n')}\n`);
  return file;
}

if (!existsSync(CHROMIUM)) {
  t.fail(`Chromium not found at ${CHROMIUM}: install it (Debian: apt-get install chromium) or set EDGEMQTT_CHROMIUM. This test never skips.`);
} else {
  t.teardown(() => browser.close());

  t.test('the page loads from the daemon alone and shows a TCP publish within a second', async (t) => {
    const { httpUrl, mqttUrl, wsUrl } = await startDaemon(t);
    const opened = await openPage(t, httpUrl);
    const { page } = opened;
    t.equal(await page.locator('#status').getAttribute('data-state'), 'signed-out', 'it starts at the login form');
    await logIn(page);

    const sensor = await connectClient(t, mqttUrl, { clientId: 'sensor-line1' });
    await sensor.publishAsync('plant/line1/temp', '21.5', { qos: 1 });
    const row = page.locator('tr[data-topic="plant/line1/temp"]');
    await row.waitFor({ timeout: SHOWN_WITHIN_MS });
    t.equal(await row.locator('.payload').textContent(), '21.5');
    t.equal(await row.locator('.bytes').textContent(), '4 B');
    t.equal(await row.locator('.qos').textContent(), '1', 'the QoS it was published with');
    t.equal(await row.locator('.retained').textContent(), 'no', 'not retained');
    t.equal(await page.locator('tr[data-topic="plant"] .payload').textContent(), '', 'a level without a message of its own shows none');

    await sensor.publishAsync('plant/line1/mode', 'auto', { qos: 0, retain: true });
    const retained = page.locator('tr[data-topic="plant/line1/mode"] .retained', { hasText: 'yes' });
    await retained.waitFor({ timeout: SHOWN_WITHIN_MS });
    t.pass('a retained message shows the flag');

    await sensor.publishAsync('plant/line1/temp', '22.0', { qos: 0 });
    await page.locator('tr[data-topic="plant/line1/temp"] .payload', { hasText: '22.0' }).waitFor({ timeout: SHOWN_WITHIN_MS });
    t.equal(await row.locator('.qos').textContent(), '0', 'the last message replaces the one before');
    t.equal(await page.locator('tr[data-topic="plant/line1/temp"]').count(), 1, 'one row per topic');

    const origin = new URL(httpUrl).origin;
    t.ok(opened.requests.length >= 10, `the page, its style and modules were requested (${opened.requests.length})`);
    t.same(opened.requests.filter((url) => new URL(url).origin !== origin), [], 'no request left the daemon');
    t.same(opened.websockets, [wsUrl], 'one WebSocket, to the daemon');
    t.same(opened.errors, [], 'no script error, no CSP violation');
  });

  t.test('the tree subscribes only while it watches, to the filter asked for', async (t) => {
    const { httpUrl, mqttUrl } = await startDaemon(t);
    const { page, errors } = await openPage(t, httpUrl);
    await logIn(page, '', '', false);
    t.equal(await page.locator('#watch').getAttribute('data-watching'), 'off', 'it starts watching nothing');
    const sensor = await connectClient(t, mqttUrl);
    await sensor.publishAsync('plant/before', '1', { qos: 1 });
    await page.getByLabel('Watch').fill('plant/#');
    await watchTopics(page);
    t.equal(await page.locator('#watch').getAttribute('data-watching'), 'on');
    t.equal(await page.locator('#watch').textContent(), 'Stop watching');
    await sensor.publishAsync('office/outside', '1', { qos: 1 });
    await sensor.publishAsync('plant/after', '1', { qos: 1 });
    // plant/after arrived after office/outside, over the same connection: had
    // the page received either of the others, it would show it by now.
    await page.locator('tr[data-topic="plant/after"]').waitFor({ timeout: SHOWN_WITHIN_MS });
    t.same(await shownTopics(page), ['plant', 'plant/after'], 'nothing published before Watch, nothing outside its filter');

    await page.getByRole('button', { name: 'Stop watching' }).click();
    // Off once the UNSUBACK is in: the broker sends nothing more for plant/# then.
    await page.locator('#watch[data-watching="off"]').waitFor({ timeout: PAGE_TIMEOUT_MS });
    await sensor.publishAsync('plant/stopped', '1', { qos: 1 });
    await page.getByLabel('Watch').fill('office/#');
    await watchTopics(page);
    await sensor.publishAsync('office/marker', '1', { qos: 1 });
    await page.locator('tr[data-topic="office/marker"]').waitFor({ timeout: SHOWN_WITHIN_MS });
    t.notOk((await shownTopics(page)).includes('plant/stopped'), 'nothing after Stop watching');
    t.same(errors, []);
  });

  t.test('the filter narrows the tree; levels open and close with the keyboard', async (t) => {
    const { httpUrl, mqttUrl } = await startDaemon(t);
    const sensor = await connectClient(t, mqttUrl);
    // Retained before the page logs in: it arrives with the subscription and shows as retained.
    await sensor.publishAsync('office/hvac/temp', '19.0', { qos: 1, retain: true });
    const { page, errors } = await openPage(t, httpUrl);
    await logIn(page);
    await page.locator('tr[data-topic="office/hvac/temp"] .retained', { hasText: 'yes' }).waitFor({ timeout: PAGE_TIMEOUT_MS });
    for (const topic of ['plant/line1/temp', 'plant/line2/temp', 'plant/line1/pressure']) await sensor.publishAsync(topic, '1', { qos: 1 });
    const all = ['office', 'office/hvac', 'office/hvac/temp', 'plant', 'plant/line1', 'plant/line1/pressure', 'plant/line1/temp', 'plant/line2', 'plant/line2/temp'];
    await eventually(async () => (await shownTopics(page)).length === all.length, PAGE_TIMEOUT_MS, 'every topic in the tree');
    t.same(await shownTopics(page), all, 'every level, sorted');
    const sys = page.locator('tr[data-topic="$SYS"]');
    await sys.waitFor({ timeout: PAGE_TIMEOUT_MS });
    t.equal(await sys.locator('button.toggle').getAttribute('aria-expanded'), 'false', 'the broker’s $SYS figures start closed');
    t.equal(await page.locator('tr[data-topic^="$SYS/"]').count(), 0, 'so none of them is listed');

    const filter = page.getByLabel('Filter');
    const expectRows = async (expected: string[], what: string) => {
      await eventually(async () => JSON.stringify(await shownTopics(page)) === JSON.stringify(expected), PAGE_TIMEOUT_MS, what);
      t.same(await shownTopics(page), expected, what);
    };
    await filter.fill('line1');
    await expectRows(['plant', 'plant/line1', 'plant/line1/pressure', 'plant/line1/temp'], 'the matches and the levels above them');
    await filter.fill('TEMP');
    await expectRows(['office', 'office/hvac', 'office/hvac/temp', 'plant', 'plant/line1', 'plant/line1/temp', 'plant/line2', 'plant/line2/temp'], 'case does not matter');
    await filter.fill('no-such-topic');
    await expectRows([], 'nothing matches');
    t.equal(await page.locator('#topics-note').textContent(), 'No topic matches the filter.');
    await filter.fill('');
    await expectRows(all, 'an empty filter shows everything again');

    const plantToggle = page.getByRole('button', { name: 'Collapse plant', exact: true });
    await plantToggle.focus();
    await page.keyboard.press('Enter');
    await expectRows(['office', 'office/hvac', 'office/hvac/temp', 'plant'], 'a collapsed level hides what is under it');
    t.equal(await page.locator('tr[data-topic="plant"] button.toggle').getAttribute('aria-expanded'), 'false');
    t.equal(await page.locator(':focus').getAttribute('aria-label'), 'Expand plant', 'the focus stays on the toggle');
    await page.keyboard.press('Space');
    await expectRows(all, 'and opens again');
    await page.getByRole('button', { name: 'Collapse all' }).click();
    await expectRows(['office', 'plant'], 'collapse all');
    await page.getByRole('button', { name: 'Expand all' }).click();
    await expectRows(all, 'expand all');
    t.same(errors, [], 'no script error');
  });

  t.test('a flood of messages: the page keeps up and shows the last one', async (t) => {
    const { httpUrl, mqttUrl } = await startDaemon(t);
    const { page, errors } = await openPage(t, httpUrl);
    await logIn(page);
    // The table draws 500 rows; the filter brings the last topic into them.
    await page.getByLabel('Filter').fill('flood/last');
    const sensor = await connectClient(t, mqttUrl);
    const MESSAGES = 5000;
    const TOPICS = 1000;
    const started = performance.now();
    const acks = [];
    for (let i = 0; i < MESSAGES; i++) acks.push(sensor.publishAsync(`flood/${i % TOPICS}`, String(i), { qos: 1 }));
    await Promise.all(acks);
    await sensor.publishAsync('flood/last', 'done', { qos: 1 });
    const published = performance.now();
    await page.locator('tr[data-topic="flood/last"] .payload', { hasText: 'done' }).waitFor({ timeout: PAGE_TIMEOUT_MS });
    const shown = performance.now();
    t.comment(`${MESSAGES} QoS 1 messages on ${TOPICS} topics: all acknowledged after ${Math.round(published - started)} ms, the last shown ${Math.round(shown - published)} ms later`);
    await page.getByLabel('Filter').fill('');
    await eventually(async () => (await page.locator('#topics-body tr').count()) === 500, PAGE_TIMEOUT_MS, '500 rows');
    t.pass('no more rows than the table draws');
    t.match(await page.locator('#topics-note').textContent(), /more rows not shown/, 'and it says so');
    await page.getByLabel('Filter').fill('flood/999');
    const row = page.locator('tr[data-topic="flood/999"]');
    await row.waitFor({ timeout: PAGE_TIMEOUT_MS });
    t.equal(await row.locator('.payload').textContent(), String(MESSAGES - 1), 'each topic holds its last message');
    t.same(errors, [], 'no script error');
  });

  t.test('the topic tree keeps at most 10,000 topics and counts what it turns away', async (t) => {
    const { httpUrl } = await startDaemon(t);
    const { page } = await openPage(t, httpUrl);
    // The page's own module, in the page: what the README promises of the tree's limits.
    const result = (await page.evaluate(`(async () => {
      const { TopicTree, MAX_TOPICS, MAX_NODES } = await import('/dashboard/topic-tree.js');
      const payload = new TextEncoder().encode('1');
      const tree = new TopicTree();
      let kept = 0;
      for (let i = 0; i < MAX_TOPICS + 5; i++) if (tree.record('sensors/' + i, payload, { qos: 0, retain: false }, 0)) kept++;
      const updated = tree.record('sensors/7', payload, { qos: 1, retain: true }, 1);
      const { rows, total } = tree.rows('', 500);
      const deep = new TopicTree();
      const tooDeep = deep.record('a/'.repeat(MAX_NODES), payload, { qos: 0, retain: false }, 0);
      return { MAX_TOPICS, kept, refused: tree.refused, topics: tree.topics, updated, rows: rows.length, total, tooDeep, deepNodes: deep.nodes };
    })()`)) as Record<string, number | boolean>;
    t.equal(result.MAX_TOPICS, 10_000);
    t.equal(result.kept, 10_000, 'the first 10,000 topics are kept');
    t.equal(result.refused, 5, 'the 5 after them are counted');
    t.equal(result.updated, true, 'a topic already kept still takes its new messages');
    t.equal(result.rows, 500, 'rows drawn at most');
    t.equal(result.total, 10_001, 'and how many there are in all');
    t.equal(result.tooDeep, false, 'a topic of more levels than the tree may hold is turned away');
    t.equal(result.deepNodes, 0, 'without keeping a part of it');
  });

  t.test('a wrong password gets a clear refusal and the form back', async (t) => {
    const file = await passwordFile(t, { ops: 'gateway-secret' });
    const { httpUrl } = await startDaemon(t, { auth: { allowAnonymous: false, passwordFile: file } });
    const opened = await openPage(t, httpUrl);
    const { page, errors, closedWebsockets: closed } = opened;
    await page.getByLabel('User name').fill('ops');
    await page.getByLabel('Password').fill('wrong');
    await page.getByRole('button', { name: 'Connect' }).click();
    await page.locator('#login-error', { hasText: 'refused' }).waitFor({ timeout: PAGE_TIMEOUT_MS });
    t.match(await page.locator('#login-error').textContent(), /The broker refused the login: .*(Bad User Name or Password|Not authorized)/i);
    t.ok(await page.locator('#login-panel').isVisible(), 'the form is back');
    t.equal(await page.locator('#status').getAttribute('data-state'), 'signed-out');
    t.equal(await page.getByLabel('Password').inputValue(), '', 'the wrong password is not kept');
    await logIn(page, 'ops', 'gateway-secret');
    t.pass('the right one connects');

    await page.getByRole('button', { name: 'Sign out' }).click();
    await page.locator('#login-panel').waitFor({ timeout: PAGE_TIMEOUT_MS });
    t.equal(await page.locator('#status').getAttribute('data-state'), 'signed-out', 'signed out');
    t.ok(await page.locator('#panels').isHidden(), 'the panels are hidden');
    await eventually(() => closed.length === opened.websockets.length, PAGE_TIMEOUT_MS, 'every WebSocket of the page closed');
    t.pass('its connection is closed');
    t.same(errors, [], 'no script error');
  });

  t.test('a login the ACL keeps from # and $SYS/# is told what it will not see', async (t) => {
    const file = await passwordFile(t, { viewer: 'look-only' });
    const aclFile = path.join(tempDir(t), 'acl');
    await writeFile(aclFile, 'user viewer\ntopic read plant/#\n');
    const { httpUrl } = await startDaemon(t, { auth: { allowAnonymous: false, passwordFile: file, aclFile } });
    const { page, errors } = await openPage(t, httpUrl);
    await logIn(page, 'viewer', 'look-only');
    const note = page.locator('#sys-note');
    await eventually(async () => ((await note.textContent()) ?? '').includes('$SYS/#') && ((await note.textContent()) ?? '').includes('Subscribing to # '), PAGE_TIMEOUT_MS, 'both refusals noted');
    t.match(await note.textContent(), /Subscribing to # was not authorized: the topic tree cannot watch it for this login\./);
    t.equal(await page.locator('#watch').getAttribute('data-watching'), 'off', 'the tree watches nothing');
    t.match(await note.textContent(), /Subscribing to \$SYS\/# was not authorized: the charts and the store panel stay empty for this login\./);
    t.equal(await page.locator('#status').getAttribute('data-state'), 'connected', 'still connected');
    t.same(errors, [], 'no script error');
  });

  t.test('without the admin API the clients panel says so and keeps no polling going', async (t) => {
    const { httpUrl } = await startDaemon(t);
    const { page, requests } = await openPage(t, httpUrl);
    await logIn(page);
    const message = page.locator('#clients-message', { hasText: 'admin API is off' });
    await message.waitFor({ timeout: PAGE_TIMEOUT_MS });
    t.match(await message.textContent(), /admin\.enabled/);
    t.ok(await page.getByRole('button', { name: 'Try the admin API again' }).isVisible(), 'a retry button');
    const asked = requests.filter((url) => url.includes('/api/v1/clients')).length;
    t.equal(asked, 1, 'asked once');
    // Proof of absence without a sleep: the retry's request is the next one to the API.
    await page.getByRole('button', { name: 'Try the admin API again' }).click();
    await eventually(() => requests.filter((url) => url.includes('/api/v1/clients')).length > asked, PAGE_TIMEOUT_MS, 'the retry');
    t.equal(requests.filter((url) => url.includes('/api/v1/clients')).length, asked + 1, 'no poll came in between');
  });

  t.test('a login the admin API does not accept is told why, and the page still works', async (t) => {
    const file = await passwordFile(t, { ops: 'gateway-secret', viewer: 'look-only' });
    const { httpUrl, mqttUrl } = await startDaemon(t, {
      auth: { allowAnonymous: false, passwordFile: file },
      admin: { enabled: true, users: ['ops'] },
    });
    const { page, errors } = await openPage(t, httpUrl);
    await logIn(page, 'viewer', 'look-only');
    const message = page.locator('#clients-message', { hasText: 'refused this login' });
    await message.waitFor({ timeout: PAGE_TIMEOUT_MS });
    t.match(await message.textContent(), /\(403[^)]*\).*admin\.users/, 'a user the config does not name: 403, and what to change');
    t.equal(await page.locator('#clients-body tr').count(), 0, 'no clients listed');
    const sensor = await connectClient(t, mqttUrl, { username: 'ops', password: 'gateway-secret' });
    await sensor.publishAsync('plant/line1/temp', '21.5', { qos: 1 });
    await page.locator('tr[data-topic="plant/line1/temp"]').waitFor({ timeout: PAGE_TIMEOUT_MS });
    t.pass('the topic tree still shows messages');
    t.same(errors, [], 'no script error');
  });

  t.test('Disconnect on a TCP client’s row disconnects it', async (t) => {
    const file = await passwordFile(t, { ops: 'gateway-secret' });
    const { httpUrl, mqttUrl } = await startDaemon(t, {
      auth: { allowAnonymous: false, passwordFile: file },
      admin: { enabled: true, users: ['ops'] },
    });
    const { page, errors } = await openPage(t, httpUrl);
    await logIn(page, 'ops', 'gateway-secret');

    const sensors = [];
    for (const id of ['sensor-line1', 'sensor-line2', 'plc-packing']) {
      sensors.push(await connectClient(t, mqttUrl, { clientId: id, username: 'ops', password: 'gateway-secret' }));
    }
    const [line1, line2, plc] = sensors;

    const row = page.locator('#clients-body tr[data-client="sensor-line2"]');
    await row.waitFor({ timeout: PAGE_TIMEOUT_MS });
    t.equal(await row.locator('.id').textContent(), 'sensor-line2');
    t.equal(await row.locator('.user').textContent(), 'ops');
    await page.locator('#clients-body tr', { hasText: 'this page' }).waitFor({ timeout: PAGE_TIMEOUT_MS });
    t.equal(await page.locator('#clients-body tr', { hasText: 'this page' }).locator('button').count(), 0, 'the page cannot disconnect itself');

    const closed = new Promise<void>((resolve) => line2!.once('close', () => resolve()));
    await page.getByRole('button', { name: 'Disconnect sensor-line2' }).click();
    await Promise.race([
      closed,
      new Promise((_, reject) => setTimeout(() => reject(new Error('sensor-line2 was not disconnected within 5 s')), 5000).unref()),
    ]);
    t.pass('the TCP client saw its connection close');
    await row.waitFor({ state: 'detached', timeout: PAGE_TIMEOUT_MS });
    t.pass('its row is gone');
    t.match(await page.locator('#clients-message').textContent(), 'Disconnected sensor-line2.');
    t.ok(line1!.connected && plc!.connected, 'the other clients stay connected');
    t.equal(await page.locator('#clients-body tr[data-client="sensor-line1"]').count(), 1, 'and listed');
    t.same(errors, [], 'no script error');
  });

  t.test('$SYS figures draw the charts and fill the store and bridge panels; a screenshot is saved', { skip: natsUnavailable() }, async (t) => {
    const nats = new NatsServer(t);
    await nats.start();
    const file = await passwordFile(t, { ops: 'gateway-secret' });
    const { httpUrl, mqttUrl } = await startDaemon(t, {
      auth: { allowAnonymous: false, passwordFile: file },
      admin: { enabled: true, users: ['ops'] },
      broker: { sysIntervalSec: 1 },
      bridge: { enabled: true, siteId: 'plant-a', nats: { servers: [nats.url] }, export: [{ filter: 'plant/#' }] },
    });
    const { page, errors } = await openPage(t, httpUrl);
    await logIn(page, 'ops', 'gateway-secret');
    const login = { username: 'ops', password: 'gateway-secret' };
    const line1 = await connectClient(t, mqttUrl, { clientId: 'sensor-line1', ...login });
    const line2 = await connectClient(t, mqttUrl, { clientId: 'sensor-line2', ...login });
    const plc = await connectClient(t, mqttUrl, { clientId: 'plc-packing', ...login });
    await line2.publishAsync('plant/line2/status', '{"state":"running","speed":42}', { qos: 1, retain: true });
    await plc.publishAsync('plant/packing/config', Buffer.from([0x01, 0x00, 0xff, 0x10]), { qos: 1, retain: true });

    // Steady traffic until the throughput chart has a line: a few $SYS rounds (1 s each).
    let count = 0;
    const traffic = setInterval(() => {
      count++;
      void line1.publishAsync('plant/line1/temp', (20 + Math.sin(count / 5)).toFixed(2), { qos: 1 }).catch(() => undefined);
      void plc.publishAsync('plant/packing/count', String(1200 + count), { qos: 0 }).catch(() => undefined);
    }, 50);
    t.teardown(() => clearInterval(traffic));
    // 'attached', not 'visible': a flat line has no height, which Playwright counts as hidden.
    await page.locator('#chart-throughput polyline.line.in').waitFor({ state: 'attached', timeout: PAGE_TIMEOUT_MS });
    await eventually(async () => Number((await page.locator('#rate-in').textContent())?.replace(/,/g, '')) > 0, PAGE_TIMEOUT_MS, 'a rate above 0');
    t.pass(`messages in per second: ${await page.locator('#rate-in').textContent()}`);
    await eventually(async () => (await page.locator('#clients-now').textContent()) === '4', PAGE_TIMEOUT_MS, 'four clients connected');
    t.pass('the page and three sensors are connected, as $SYS says');
    await page.locator('#chart-clients polyline.line.clients').waitFor({ state: 'attached', timeout: PAGE_TIMEOUT_MS });

    const store = page.locator('#store');
    await store.getByText('Sessions').waitFor({ timeout: PAGE_TIMEOUT_MS });
    t.match(await store.textContent(), /Writesok/, 'store writes are fine');
    t.match(await store.textContent(), /Sessions0Queued messages0Retained messages\d+Size on disk\d/, 'its sizes (no persistent session here)');
    await page.locator('#bridge-panel').waitFor({ state: 'visible', timeout: PAGE_TIMEOUT_MS });
    await page.locator('#bridge', { hasText: 'connected' }).waitFor({ timeout: PAGE_TIMEOUT_MS });
    t.pass('the bridge panel shows its state');
    t.match(await page.locator('tr[data-topic="plant/packing/config"] .payload').textContent(), '01 00 ff 10', 'a binary payload in hex');
    await page.locator('#clients-body tr[data-client="sensor-line2"]').waitFor({ timeout: PAGE_TIMEOUT_MS });
    await page.locator('tr[data-topic="plant/packing/count"]').waitFor({ timeout: PAGE_TIMEOUT_MS });
    clearInterval(traffic);

    await mkdir(new URL('.', SCREENSHOT), { recursive: true });
    await page.screenshot({ path: SCREENSHOT.pathname, fullPage: true });
    t.pass(`screenshot saved at ${SCREENSHOT.pathname}`);
    t.same(errors, [], 'no script error');
  });
}
