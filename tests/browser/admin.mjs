// Real-browser test of the /admin page, driven by tests/e2e/admin_page.rs.
//
//   node tests/browser/admin.mjs <base url> <admin token> <tenant id> <device to connect later> <connected device>...
//
// Loads /admin#token=… in headless Debian chromium, expands the tenant, checks that the
// connected devices' session actors show online, prints READY and waits for a line on
// stdin (the Rust test then connects <device to connect later>), and checks the page
// shows that device online without a reload. With SAVE_SCREENSHOT=1 it then writes
// docs/admin.png (or $SCREENSHOT_PATH). Then it searches, and disconnects that device's
// client through the confirmed action (the Rust side sees 4001). The queue dispatcher
// section must show its 4 lanes, the low one paused with 25 jobs queued (the Rust side
// set that up); the script resumes it through the confirmed action and waits for it to
// drain. Exits 0 on success, 1 with a message otherwise.
import { mkdtempSync, rmSync, existsSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, dirname, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { createInterface } from 'node:readline';
import { chromium } from 'playwright-core';

const [base, token, tenantId, laterDevice, ...connected] = process.argv.slice(2);
if (!base || !token || !tenantId || !laterDevice) {
  console.error('usage: admin.mjs <base url> <admin token> <tenant id> <device to connect later> [connected device...]');
  process.exit(2);
}
const here = dirname(fileURLToPath(import.meta.url));
const executablePath = process.env.CHROMIUM || '/usr/bin/chromium';
if (!existsSync(executablePath)) {
  console.error(`chromium not found at ${executablePath}: run ./scripts/test (it installs Debian's chromium)`);
  process.exit(1);
}
const WAIT = 15000;
const lines = createInterface({ input: process.stdin });
const nextLine = () => new Promise((res, rej) => {
  lines.once('line', res);
  lines.once('close', () => rej(new Error('stdin closed before the go-ahead')));
});

const profile = mkdtempSync(join(tmpdir(), 'switchboard-chromium-'));
let context;
let failed = false;
try {
  context = await chromium.launchPersistentContext(profile, {
    executablePath,
    headless: true,
    viewport: { width: 1360, height: 900 },
    deviceScaleFactor: 1,
    args: [
      '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
      '--disable-background-networking', '--disable-component-update', '--disable-sync',
    ],
  });
  const page = context.pages()[0] || await context.newPage();
  page.on('console', (m) => { if (m.type() === 'error') console.error('[page]', m.text()); });
  page.on('pageerror', (e) => console.error('[page error]', e.message));

  await page.goto(`${base}/admin#token=${encodeURIComponent(token)}`);
  await page.waitForSelector('#live[data-state="live"]', { timeout: WAIT });
  if (page.url().includes(token)) throw new Error('the token is still in the address bar: ' + page.url());

  // The tenant is listed; expand it.
  const tenantRow = page.locator(`tr[data-tenant-id="${tenantId}"]`);
  await tenantRow.waitFor({ timeout: WAIT });
  await tenantRow.click();
  for (const id of connected) {
    await page.locator(`tr[data-device-id="${id}"][data-online="true"]`).waitFor({ timeout: WAIT });
  }
  const actorText = await page.locator(`tr[data-device-id="${connected[0] ?? laterDevice}"]`).innerText().catch(() => '');
  if (connected.length && !actorText.includes(`device:${connected[0]}`)) {
    throw new Error(`device actor name not shown: ${actorText}`);
  }
  if (await page.locator(`tr[data-device-id="${laterDevice}"][data-online="true"]`).count()) {
    throw new Error('the later device shows online before it connected');
  }
  // Live update, not a reload: this marker survives only in the same document.
  await page.evaluate(() => { window.__sameDocument = true; });

  console.log('READY');
  await nextLine();

  await page.locator(`tr[data-device-id="${laterDevice}"][data-online="true"]`).waitFor({ timeout: WAIT });
  if (!(await page.evaluate(() => window.__sameDocument === true))) {
    throw new Error('the page reloaded instead of updating live');
  }
  // The dispatcher and its lanes: low paused, its jobs queued.
  await page.locator('#dispatcher tr[data-lane="low"] button[data-lane-action="resume"]').waitFor({ timeout: WAIT });
  const lanes = await page.locator('#dispatcher tr[data-lane]').evaluateAll(
    (rows) => rows.map((r) => r.dataset.lane));
  if (lanes.join(',') !== 'critical,high,normal,low') throw new Error('dispatcher lanes: ' + lanes);
  await page.waitForFunction(
    () => document.querySelector('#dispatcher tr[data-lane="low"] td[data-col="depth"]')?.textContent === '25',
    null, { timeout: WAIT });
  if (process.env.SAVE_SCREENSHOT === '1') {
    const out = process.env.SCREENSHOT_PATH || resolve(here, '../../docs/admin.png');
    await page.mouse.move(0, 0);
    await page.waitForTimeout(300);
    await page.screenshot({ path: out, fullPage: true });
    console.error(`screenshot written to ${out}`);
  }

  // Search narrows the rows (by device id here).
  await page.fill('#search', laterDevice);
  await page.waitForFunction(
    ([keep, gone]) => document.querySelector(`tr[data-device-id="${keep}"]`)
      && !(gone && document.querySelector(`tr[data-device-id="${gone}"]`)),
    [laterDevice, connected[0]], { timeout: WAIT });
  await page.fill('#search', '');

  // An action, confirmed: disconnect the later device's client; it shows offline.
  page.once('dialog', (d) => d.accept());
  const row = page.locator(`tr[data-device-id="${laterDevice}"]`);
  await row.locator('button[data-action="disconnect"]').click();
  await page.locator(`tr[data-device-id="${laterDevice}"][data-online="false"]`).waitFor({ timeout: WAIT });

  // Resume the paused lane, confirmed: its jobs drain.
  page.once('dialog', (d) => d.accept());
  await page.locator('#dispatcher tr[data-lane="low"] button[data-lane-action="resume"]').click();
  await page.locator('#dispatcher tr[data-lane="low"] button[data-lane-action="pause"]').waitFor({ timeout: WAIT });
  await page.waitForFunction(
    () => document.querySelector('#dispatcher tr[data-lane="low"] td[data-col="depth"]')?.textContent === '0',
    null, { timeout: WAIT });
  console.log('OK');
} catch (err) {
  failed = true;
  console.error('admin page check failed:', err && err.stack ? err.stack : err);
} finally {
  lines.close();
  if (context) await context.close().catch(() => {});
  rmSync(profile, { recursive: true, force: true });
}
process.exit(failed ? 1 : 0);
