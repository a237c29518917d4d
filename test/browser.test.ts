/**
 * The browser path end to end: a real headless Chromium loads a dashboard
 * page (test/fixtures/browser/index.html) from its own origin, connects with
 * mqtt.js over WebSocket, and shows what a TCP sensor publishes; a command
 * the page publishes reaches a TCP subscriber; a page from an origin that is
 * not allowed cannot connect.
 *
 * Needs Chromium at /usr/bin/chromium (or EDGEMQTT_CHROMIUM). CI installs it;
 * without it this test fails, it never skips.
 */
import t, { type Test } from 'tap';
import { existsSync } from 'node:fs';
import { readFile } from 'node:fs/promises';
import { createServer } from 'node:http';
import { createRequire } from 'node:module';
import type { AddressInfo } from 'node:net';
import type { Page } from 'playwright-core';
import { CHROMIUM, sharedBrowser } from './helpers/chromium.js';
import { startDaemon } from './helpers/daemon.js';
import { connectClient, eventually, MessageLog } from './helpers/mqtt.js';

/** Bound on every wait for the page; generous because the machine is shared. */
const PAGE_TIMEOUT_MS = 15_000;

const PAGE_HTML = new URL('./fixtures/browser/index.html', import.meta.url);
/** The mqtt.js browser build (package export `mqtt/dist/*`). */
const MQTT_BROWSER_BUILD = createRequire(import.meta.url).resolve('mqtt/dist/mqtt.min');

/** Serves the dashboard page and the mqtt.js browser build from its own origin. */
async function servePage(t: Test): Promise<string> {
  const [html, script] = await Promise.all([readFile(PAGE_HTML), readFile(MQTT_BROWSER_BUILD)]);
  const server = createServer((request, response) => {
    const path = new URL(request.url ?? '/', 'http://localhost').pathname;
    if (path === '/' || path === '/index.html') {
      response.writeHead(200, { 'Content-Type': 'text/html; charset=utf-8' }).end(html);
    } else if (path === '/mqtt.min.js') {
      response.writeHead(200, { 'Content-Type': 'text/javascript; charset=utf-8' }).end(script);
    } else {
      response.writeHead(404, { 'Content-Type': 'text/plain' }).end('not found\n');
    }
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => resolve());
  });
  t.teardown(
    () =>
      new Promise<void>((resolve) => {
        server.closeAllConnections();
        server.close(() => resolve());
      }),
  );
  return `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
}

/** One Chromium for the whole file; closed in the file's teardown. */
const browser = sharedBrowser();

interface Dashboard {
  page: Page;
  /** URLs of the WebSockets the page opened. */
  websockets: string[];
  /** What Chromium reported about WebSocket failures. */
  socketErrors: string[];
  /** Uncaught errors in the page's script; a test ends by checking there were none. */
  pageErrors: string[];
}

/** Opens the dashboard from `pageOrigin` pointed at `brokerUrl`, in a fresh browser context. */
async function openDashboard(t: Test, pageOrigin: string, brokerUrl: string): Promise<Dashboard> {
  const context = await (await browser.get()).newContext();
  t.teardown(() => context.close());
  const page = await context.newPage();
  const websockets: string[] = [];
  const socketErrors: string[] = [];
  page.on('websocket', (ws) => {
    websockets.push(ws.url());
    ws.on('socketerror', (error) => socketErrors.push(error));
  });
  const pageErrors: string[] = [];
  page.on('pageerror', (error) => pageErrors.push(error.message));
  await page.goto(`${pageOrigin}/?broker=${encodeURIComponent(brokerUrl)}`, { timeout: PAGE_TIMEOUT_MS });
  return { page, websockets, socketErrors, pageErrors };
}

/** Waits until the page's status is one of `states`, and returns it. */
async function waitForStatus(page: Page, states: string[]): Promise<string> {
  const selector = states.map((state) => `#status[data-state="${state}"]`).join(', ');
  await page.locator(selector).waitFor({ timeout: PAGE_TIMEOUT_MS });
  return (await page.locator('#status').getAttribute('data-state')) ?? '';
}

if (!existsSync(CHROMIUM)) {
  t.fail(
    `Chromium not found at ${CHROMIUM}. The browser tests need it: install it (Debian: apt-get install chromium) ` +
      'or point EDGEMQTT_CHROMIUM at a Chromium binary. This test never skips.',
  );
} else {
  t.teardown(() => browser.close());

  t.test('a dashboard page shows what a TCP sensor publishes', async (t) => {
    const pageOrigin = await servePage(t);
    const { mqttUrl, wsUrl } = await startDaemon(t, { http: { websocket: { allowedOrigins: [pageOrigin] } } });
    const dashboard = await openDashboard(t, pageOrigin, wsUrl);
    const { page } = dashboard;
    t.equal(await waitForStatus(page, ['subscribed', 'error']), 'subscribed', 'the page connected and subscribed');

    const sensor = await connectClient(t, mqttUrl, { clientId: 'sensor-line1' });
    await sensor.publishAsync('plant/line1/temp', '21.5', { qos: 1 });

    const item = page.locator('#messages li', { hasText: 'plant/line1/temp' });
    await item.waitFor({ timeout: PAGE_TIMEOUT_MS });
    t.equal(await item.locator('.topic').textContent(), 'plant/line1/temp');
    t.equal(await item.locator('.payload').textContent(), '21.5');
    t.equal(await page.locator('#messages li').count(), 1, 'shown exactly once');
    t.same(dashboard.pageErrors, [], 'the page script raised no error');
  });

  t.test('a command published by the page reaches a TCP subscriber', async (t) => {
    const pageOrigin = await servePage(t);
    const { mqttUrl, wsUrl } = await startDaemon(t, { http: { websocket: { allowedOrigins: [pageOrigin] } } });
    const plc = await connectClient(t, mqttUrl, { clientId: 'plc-line1' });
    const received = new MessageLog(plc);
    await plc.subscribeAsync('plant/+/cmd', { qos: 1 });

    const dashboard = await openDashboard(t, pageOrigin, wsUrl);
    const { page } = dashboard;
    t.equal(await waitForStatus(page, ['subscribed', 'error']), 'subscribed', 'the page connected and subscribed');
    await page.locator('#command-topic').fill('plant/line1/cmd');
    await page.locator('#command-payload').fill('{"action":"start"}');
    await page.locator('#command-send').click();

    const [message] = await received.waitForCount(1, PAGE_TIMEOUT_MS);
    t.equal(message?.topic, 'plant/line1/cmd');
    t.equal(message?.payload, '{"action":"start"}');
    t.equal(message?.packet.qos, 1, 'delivered at the QoS both sides asked for');
    await page.locator('#command-result', { hasText: 'acknowledged' }).waitFor({ timeout: PAGE_TIMEOUT_MS });
    t.pass('the page saw its PUBACK');
    t.same(dashboard.pageErrors, [], 'the page script raised no error');
  });

  t.test('a page from an origin that is not allowed cannot connect', async (t) => {
    const allowedOrigin = await servePage(t);
    const otherOrigin = await servePage(t);
    t.not(otherOrigin, allowedOrigin);
    const { mqttUrl, wsUrl } = await startDaemon(t, { http: { websocket: { allowedOrigins: [allowedOrigin] } } });

    // The same page from the allowed origin connects to the same daemon, so
    // the only difference between the two pages is their origin.
    const allowed = await openDashboard(t, allowedOrigin, wsUrl);
    const allowedPage = allowed.page;
    t.equal(await waitForStatus(allowedPage, ['subscribed', 'error']), 'subscribed', 'the allowed origin connects');

    const refused = await openDashboard(t, otherOrigin, wsUrl);
    const { page } = refused;
    t.equal(await waitForStatus(page, ['subscribed', 'error']), 'error', 'the page reports a connection error');
    t.match(await page.locator('#error').textContent(), /WebSocket error|closed before CONNACK/);
    t.same(refused.websockets, [wsUrl], 'the page did try the broker');
    await eventually(() => refused.socketErrors.length > 0, PAGE_TIMEOUT_MS, 'Chromium to report the failed handshake');
    t.match(refused.socketErrors.join('\n'), /Unexpected response code: 403/, 'the daemon refused the handshake with 403');

    // Nothing published afterwards reaches it, though it reaches the allowed page.
    const sensor = await connectClient(t, mqttUrl);
    await sensor.publishAsync('plant/line1/temp', '21.5', { qos: 1 });
    await allowedPage.locator('#messages li', { hasText: 'plant/line1/temp' }).waitFor({ timeout: PAGE_TIMEOUT_MS });
    t.equal(await page.locator('#messages li').count(), 0, 'the refused page received nothing');
    t.equal(await waitForStatus(page, ['error']), 'error', 'and it did not connect later');
    t.same([...allowed.pageErrors, ...refused.pageErrors], [], 'the page scripts raised no error');
  });
}
