/**
 * Headless Chromium for the browser tests (playwright-core drives the
 * system's Chromium; nothing is downloaded). One browser per test file:
 * start-up is the slow part.
 *
 * Needs Chromium at /usr/bin/chromium (or EDGEMQTT_CHROMIUM). CI installs it;
 * a test file without it fails, it never skips.
 */
import { chromium, type Browser } from 'playwright-core';

export const CHROMIUM = process.env.EDGEMQTT_CHROMIUM ?? '/usr/bin/chromium';

export const CHROMIUM_ARGS = [
  '--headless',
  '--no-sandbox',
  '--disable-gpu',
  '--disable-quic',
  '--no-first-run',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
];

/** A lazily launched browser; the caller closes it in the file's teardown. */
export function sharedBrowser(): { get(): Promise<Browser>; close(): Promise<void> } {
  let browser: Promise<Browser> | undefined;
  return {
    get() {
      browser ??= chromium.launch({ executablePath: CHROMIUM, args: CHROMIUM_ARGS, timeout: 60_000 });
      return browser;
    },
    async close() {
      // A launch that failed has nothing to close (the test that awaited it failed already).
      await (await browser?.catch(() => undefined))?.close();
    },
  };
}
