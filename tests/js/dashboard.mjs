// Drives Weir's dashboard in headless Chromium as an operator would:
//   node dashboard.mjs UI_URL TOKEN CLIENT_ID PLUGIN PLUGIN_FILE NEW_VERSION_FILE SHADOW_FILE [SCREENSHOT_DIR]
// Signs in with the token, finds CLIENT_ID among the connected clients, its session,
// subscription and a retained message, watches the message chart move, reloads
// PLUGIN after copying NEW_VERSION_FILE over PLUGIN_FILE (and sees its version
// change), promotes SHADOW_FILE set as its shadow, disables and enables it, and kicks
// the client. Prints a line per step (SEEN, TABLES, CHART, VERSION, PROMOTED, TOGGLED,
// KICKED, DONE) or FAIL with the reason.
// With SCREENSHOT_DIR, also screenshots of the sign-in, the dashboard and the page
// after the kick, for docs/operations.md.
import { chromium } from 'playwright-core';
import { copyFileSync, mkdirSync } from 'node:fs';
import path from 'node:path';

const [uiUrl, token, clientId, plugin, pluginFile, newVersion, shadow, shots] = process.argv.slice(2);
const WAIT = { timeout: 30000 };

const browser = await chromium.launch({
  executablePath: '/usr/bin/chromium',
  headless: true,
  args: ['--headless', '--no-sandbox', '--disable-gpu', '--no-first-run',
    '--disable-background-networking', '--disable-component-update', '--disable-sync'],
});
let exitCode = 1;
try {
  const page = await browser.newPage({ viewport: { width: 1400, height: 1000 } });
  page.on('dialog', (d) => d.accept()); // the kick button asks to confirm
  page.on('pageerror', (e) => console.log(`PAGEERROR ${e.message}`));
  const shot = async (name) => {
    if (!shots) return;
    mkdirSync(shots, { recursive: true });
    await page.screenshot({ path: path.join(shots, name), fullPage: true });
  };

  const login = await page.goto(uiUrl);
  if (login.status() !== 401) throw new Error(`/ui without the token answered ${login.status()}, not 401`);
  await page.fill('#token', 'not-the-token');
  await page.click('button[type=submit]');
  await page.waitForSelector('#error:has-text("wrong token")', WAIT);
  await shot('dashboard-login.png');
  await page.fill('#token', token);
  await page.click('button[type=submit]');
  await page.waitForSelector('#chart-messages', WAIT);

  const client = `#clients tr[data-client="${clientId}"]`;
  await page.waitForSelector(client, WAIT);
  console.log(`SEEN ${clientId}`);
  await page.waitForSelector(`#sessions tr[data-session="${clientId}"]`, WAIT);
  await page.waitForSelector('#subscriptions tr[data-filter="dash/#"]', WAIT);
  await page.waitForSelector('#retained tr[data-topic="dash/retained"]', WAIT);
  console.log('TABLES');

  // The message chart: new samples every second, and the publishes show as a rate.
  const chart = page.locator('#chart-messages');
  const first = Number(await chart.getAttribute('data-samples'));
  await page.waitForFunction(
    (n) => {
      const c = document.getElementById('chart-messages');
      return Number(c.dataset.samples) >= n + 3 && parseFloat(c.querySelector('.legend .in b').textContent) > 0;
    },
    first,
    WAIT,
  );
  const rate = await page.textContent('#chart-messages .legend .in b');
  if (shots) {
    // For the documentation: half a minute of history in the charts.
    await page.waitForFunction(() => Number(document.getElementById('chart-messages').dataset.samples) >= 30, null, { timeout: 60000 });
  }
  console.log(`CHART ${await chart.getAttribute('data-samples')} ${rate}`);
  await shot('dashboard.png');

  const row = `#plugins tr[data-plugin="${plugin}"]`;
  const before = (await page.textContent(`${row} .version`)).trim();
  copyFileSync(newVersion, pluginFile);
  await page.click(`${row} button[data-action=reload]`);
  await page.waitForFunction(
    ([sel, old]) => {
      const v = document.querySelector(sel);
      return v && v.textContent.trim() !== old;
    },
    [`${row} .version`, before],
    WAIT,
  );
  await page.waitForSelector('#notice:has-text("Reloaded")', WAIT);
  console.log(`VERSION ${before} ${(await page.textContent(`${row} .version`)).trim()}`);

  // A shadow candidate (the first version again, set through the API as `weir shadow`
  // would), promoted from the page.
  const shadowed = await page.request.post(`${new URL(uiUrl).origin}/plugins/${plugin}/shadow?path=${encodeURIComponent(shadow)}`);
  if (!shadowed.ok()) throw new Error(`shadow: ${shadowed.status()} ${await shadowed.text()}`);
  const reloaded = (await page.textContent(`${row} .version`)).trim();
  await page.click(`${row} button[data-action=promote]`, WAIT);
  await page.waitForFunction(
    ([sel, old]) => document.querySelector(sel)?.textContent.trim() !== old,
    [`${row} .version`, reloaded],
    WAIT,
  );
  console.log(`PROMOTED ${(await page.textContent(`${row} .version`)).trim()}`);

  await page.click(`${row} button[data-action=disable]`);
  await page.waitForSelector(`${row} .enabled:has-text("no")`, WAIT);
  await page.click(`${row} button[data-action=enable]`);
  await page.waitForSelector(`${row} .enabled:has-text("yes")`, WAIT);
  console.log('TOGGLED');

  await page.fill('#client-search', 'no-such-client');
  await page.waitForSelector(client, { state: 'detached', ...WAIT });
  await page.fill('#client-search', clientId.slice(0, 6));
  await page.waitForSelector(client, WAIT);
  await page.click(`${client} button[data-action=kick]`);
  await page.waitForSelector(client, { state: 'detached', ...WAIT });
  await page.waitForSelector(`#sessions tr[data-session="${clientId}"] .off`, WAIT);
  // Its session stays, and what is published for it queues there.
  await page.waitForFunction(
    (sel) => Number(document.querySelector(sel)?.textContent) > 0,
    `#sessions tr[data-session="${clientId}"] .queued`,
    WAIT,
  );
  console.log(`KICKED ${clientId}`);
  await shot('dashboard-after-kick.png');
  console.log('DONE');
  exitCode = 0;
} catch (e) {
  console.log(`FAIL ${e.message}`);
} finally {
  await browser.close();
}
process.exit(exitCode);
