// MQTT.js in headless Chromium, over ws:// and wss://:
//   node browser.mjs WS_URL WSS_URL ALL_NAMES_CSV CA_FILE
// Serves a page on 127.0.0.1 that loads MQTT.js's browser bundle and runs two mesh
// participants, browser-ws and browser-wss. The test CA is trusted the way Chromium on
// Linux trusts any CA: through an NSS database in the (throwaway) home directory.
import { chromium } from 'playwright-core';
import { execFileSync } from 'node:child_process';
import { mkdtempSync, mkdirSync, readFileSync, rmSync } from 'node:fs';
import http from 'node:http';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const [wsUrl, wssUrl, allCsv, ca] = process.argv.slice(2);
const here = path.dirname(fileURLToPath(import.meta.url));

const home = mkdtempSync(path.join(os.tmpdir(), 'weir-chromium-'));
const nssdb = path.join(home, '.pki', 'nssdb');
mkdirSync(nssdb, { recursive: true });
execFileSync('certutil', ['-N', '-d', `sql:${nssdb}`, '--empty-password']);
execFileSync('certutil', ['-A', '-d', `sql:${nssdb}`, '-t', 'C,,', '-n', 'weir-test-ca', '-i', ca]);

const page = `<!doctype html><meta charset="utf-8"><title>weir mesh</title>
<script src="/mqtt.min.js"></script>
<script type="module">
  import { runMesh } from '/mesh.js';
  const q = new URLSearchParams(location.search);
  const all = q.get('all').split(',');
  for (const [name, url] of [['browser-ws', q.get('ws')], ['browser-wss', q.get('wss')]]) {
    runMesh(window.mqtt, { url, name, all, log: (m) => console.log(m) }).then(
      (got) => console.log('DONE ' + name + ' ' + got.join(',')),
      (e) => console.log('FAIL ' + e.message),
    );
  }
</script>`;
const files = {
  '/': ['text/html', page],
  '/mqtt.min.js': ['text/javascript', readFileSync(path.join(here, 'node_modules/mqtt/dist/mqtt.min.js'))],
  '/mesh.js': ['text/javascript', readFileSync(path.join(here, 'mesh.js'))],
};
const server = http.createServer((req, res) => {
  const f = files[new URL(req.url, 'http://x').pathname];
  if (!f) {
    res.writeHead(404).end();
    return;
  }
  res.writeHead(200, { 'content-type': f[0] }).end(f[1]);
});
await new Promise((r) => server.listen(0, '127.0.0.1', r));

const browser = await chromium.launch({
  executablePath: '/usr/bin/chromium',
  headless: true,
  args: [
    '--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
    '--disable-background-networking', '--disable-component-update', '--disable-sync',
  ],
  env: { ...process.env, HOME: home },
});
let exitCode = 1;
try {
  const tab = await browser.newPage();
  const done = new Set();
  const finished = new Promise((resolve) => {
    tab.on('console', (m) => {
      const t = m.text();
      if (/^(READY|DONE|FAIL)/.test(t)) console.log(t);
      if (t.startsWith('DONE')) done.add(t.split(' ')[1]);
      if (t.startsWith('FAIL') || done.size === 2) resolve(done.size === 2);
    });
    tab.on('pageerror', (e) => {
      console.log(`FAIL page error: ${e.message}`);
      resolve(false);
    });
    setTimeout(() => resolve(false), 45000);
  });
  const q = new URLSearchParams({ ws: wsUrl, wss: wssUrl, all: allCsv });
  await tab.goto(`http://127.0.0.1:${server.address().port}/?${q}`);
  exitCode = (await finished) ? 0 : 1;
} catch (e) {
  console.log(`FAIL ${e.message}`);
} finally {
  await browser.close();
  server.close();
  rmSync(home, { recursive: true, force: true });
}
process.exit(exitCode);
