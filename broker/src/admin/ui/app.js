// The Weir dashboard. Everything comes from the admin API's JSON endpoints, with the
// cookie the login page had set; nothing is loaded from anywhere else. Values are put
// into the page as text, never as HTML: client ids, topics and payloads are the
// clients' own.
'use strict';

const HISTORY = 120; // samples kept per chart: two minutes at one a second
const charts = {
  messages: { el: document.getElementById('chart-messages'), series: [[], []], colors: ['--in', '--out'] },
  connections: { el: document.getElementById('chart-connections'), series: [[]], colors: ['--in'] },
  drops: { el: document.getElementById('chart-drops'), series: [[]], colors: ['--drop'] },
};
let previous = null;

async function api(path, options = {}) {
  const r = await fetch(path, { credentials: 'same-origin', ...options });
  if (r.status === 401) {
    location.reload(); // the cookie is gone or the token changed: sign in again
    throw new Error('signed out');
  }
  if (!r.ok) {
    const body = await r.json().catch(() => ({}));
    throw new Error(body.error || `${r.status} ${r.statusText}`);
  }
  return r.status === 204 ? null : r.json();
}

function notice(text, isError = false) {
  const n = document.getElementById('notice');
  n.textContent = text;
  n.className = isError ? 'error' : '';
}

function cell(tr, text, cls) {
  const td = document.createElement('td');
  td.textContent = text;
  if (cls) td.className = cls;
  tr.appendChild(td);
  return td;
}

function button(td, label, action, run) {
  const b = document.createElement('button');
  b.type = 'button';
  b.textContent = label;
  b.dataset.action = action;
  b.addEventListener('click', run);
  td.appendChild(b);
  return b;
}

function fill(section, rows, make) {
  const tbody = document.querySelector(`#${section} tbody`);
  const fresh = rows.map(make);
  tbody.replaceChildren(...fresh);
}

function count(section, shown, total) {
  const c = document.querySelector(`#${section} .count`);
  if (c) c.textContent = shown < total ? `(${shown} of ${total})` : `(${total})`;
}

const when = (secs) => (secs ? new Date(secs * 1000).toLocaleString() : '');

// --- charts -------------------------------------------------------------------

function push(chart, values) {
  values.forEach((v, i) => {
    const s = chart.series[i];
    s.push(v);
    if (s.length > HISTORY) s.shift();
  });
  chart.el.dataset.samples = String(Number(chart.el.dataset.samples) + 1);
  chart.el.querySelectorAll('.legend b').forEach((b, i) => {
    b.textContent = formatRate(values[i]);
  });
  draw(chart);
}

function formatRate(v) {
  if (v >= 1e6) return `${(v / 1e6).toFixed(2)}M`;
  if (v >= 1e4) return `${(v / 1e3).toFixed(1)}k`;
  return Number.isInteger(v) ? String(v) : v.toFixed(1);
}

// A round top for the scale, a little above the highest value, so a steady line shows
// below the top edge.
function headroom(v) {
  if (v <= 0) return 1;
  const step = 10 ** Math.floor(Math.log10(v * 1.25));
  return Math.ceil((v * 1.25) / step) * step;
}

function draw(chart) {
  const canvas = chart.el.querySelector('canvas');
  const ctx = canvas.getContext('2d');
  const w = canvas.width, h = canvas.height, pad = 4;
  const style = getComputedStyle(document.documentElement);
  ctx.clearRect(0, 0, w, h);
  const max = headroom(Math.max(...chart.series.flat(), 0));
  ctx.strokeStyle = '#334155';
  ctx.fillStyle = '#94a3b8';
  ctx.font = '11px system-ui';
  for (const f of [0.5, 1]) {
    const y = h - pad - f * (h - 2 * pad);
    ctx.beginPath(); ctx.moveTo(0, y); ctx.lineTo(w, y); ctx.stroke();
    ctx.fillText(formatRate(max * f), 4, y + 12);
  }
  chart.series.forEach((s, i) => {
    ctx.strokeStyle = style.getPropertyValue(chart.colors[i]).trim();
    ctx.lineWidth = 2;
    ctx.beginPath();
    s.forEach((v, j) => {
      const x = w - (s.length - 1 - j) * (w / (HISTORY - 1));
      const y = h - pad - (v / max) * (h - 2 * pad);
      if (j === 0) ctx.moveTo(x, y); else ctx.lineTo(x, y);
    });
    ctx.stroke();
  });
}

async function sample() {
  const now = await api('/stats');
  if (previous) {
    const dt = Math.max(0.001, (now.time_ms - previous.time_ms) / 1000);
    const rate = (k) => Math.max(0, (now[k] - previous[k]) / dt);
    push(charts.messages, [rate('messages_received'), rate('messages_sent')]);
    push(charts.connections, [now.connections]);
    push(charts.drops, [rate('dropped')]);
  }
  previous = now;
  document.getElementById('summary').textContent =
    `${now.connections} connected · ${now.sessions} sessions · ${now.subscriptions} subscriptions · ` +
    `${now.retained} retained · ${now.queued} queued`;
}

// --- tables -------------------------------------------------------------------

async function clients() {
  const q = document.getElementById('client-search').value;
  const page = await api(`/clients?limit=1000&search=${encodeURIComponent(q)}`);
  count('clients', page.clients.length, page.total);
  fill('clients', page.clients, (c) => {
    const tr = document.createElement('tr');
    tr.dataset.client = c.client_id;
    cell(tr, c.client_id);
    cell(tr, c.listener);
    cell(tr, c.address);
    cell(tr, c.protocol);
    cell(tr, when(c.connected_since));
    const b = button(cell(tr, ''), 'Kick', 'kick', () => kick(c.client_id));
    b.className = 'danger';
    return tr;
  });
}

async function kick(id) {
  if (!confirm(`Disconnect ${id}? (reason 0x98, administrative action)`)) return;
  await act(`Disconnected ${id}`, `/clients/${encodeURIComponent(id)}`, 'DELETE');
}

async function sessions() {
  const page = await api('/sessions?limit=1000');
  count('sessions', page.sessions.length, page.total);
  fill('sessions', page.sessions, (s) => {
    const tr = document.createElement('tr');
    tr.dataset.session = s.client_id;
    cell(tr, s.client_id);
    cell(tr, s.connected ? 'yes' : `no, since ${when(s.disconnected_at)}`, s.connected ? 'on' : 'off');
    cell(tr, s.queued, 'num queued');
    cell(tr, s.inflight, 'num');
    cell(tr, s.subscriptions, 'num');
    cell(tr, s.expiry_interval === 4294967295 ? 'never expires' : `${s.expiry_interval} s`);
    return tr;
  });
}

async function subscriptions() {
  const page = await api('/subscriptions?limit=1000');
  count('subscriptions', page.subscriptions.length, page.total);
  fill('subscriptions', page.subscriptions, (s) => {
    const tr = document.createElement('tr');
    tr.dataset.filter = s.filter;
    cell(tr, s.client_id);
    cell(tr, s.filter).className = 'hash';
    cell(tr, s.qos, 'num');
    return tr;
  });
}

async function retained() {
  const f = document.getElementById('retained-filter').value || '#';
  const page = await api(`/retained?limit=1000&filter=${encodeURIComponent(f)}`);
  count('retained', page.messages.length, page.total);
  fill('retained', page.messages, (m) => {
    const tr = document.createElement('tr');
    tr.dataset.topic = m.topic;
    cell(tr, m.topic).className = 'hash';
    cell(tr, m.qos, 'num');
    cell(tr, m.bytes, 'num');
    cell(tr, m.payload, 'payload');
    return tr;
  });
}

async function plugins() {
  const { plugins } = await api('/plugins');
  fill('plugins', plugins, (p, i) => {
    const tr = document.createElement('tr');
    tr.dataset.plugin = p.name;
    cell(tr, i + 1, 'num');
    cell(tr, p.name);
    const v = cell(tr, p.sha256.slice(0, 12), 'hash version');
    v.title = `${p.sha256}, loaded ${when(p.loaded_at)}`;
    cell(tr, p.enabled ? 'yes' : 'no', `enabled ${p.enabled ? 'on' : 'off'}`);
    cell(tr, p.calls, 'num calls');
    cell(tr, p.denials, 'num');
    const errors = Object.values(p.errors).reduce((a, b) => a + b, 0);
    cell(tr, errors, 'num');
    const upTo = (us) => (us === null ? '—' : `≤ ${us} µs`);
    const latency = cell(tr, p.calls ? `${upTo(p.latency_p50_us)} / ${upTo(p.latency_p99_us)}` : '', 'num');
    latency.title = `mean ${p.latency_mean_us} µs (includes the first call's instantiation)`;
    cell(tr, p.shadow ? `${p.shadow.sha256.slice(0, 12)} (${p.shadow.agreed} agreed, ${p.shadow.disagreed} disagreed)` : '');
    const td = cell(tr, '');
    const name = encodeURIComponent(p.name);
    button(td, 'Reload', 'reload', () => act(`Reloaded ${p.name}`, `/plugins/${name}/reload`));
    if (p.enabled) {
      button(td, 'Disable', 'disable', () => act(`Disabled ${p.name}`, `/plugins/${name}/disable`));
    } else {
      button(td, 'Enable', 'enable', () => act(`Enabled ${p.name}`, `/plugins/${name}/enable`));
    }
    if (p.shadow) {
      button(td, 'Promote shadow', 'promote', () => act(`Promoted the shadow of ${p.name}`, `/plugins/${name}/promote`));
    }
    return tr;
  });
}

async function act(done, path, method = 'POST') {
  try {
    await api(path, { method });
    notice(done);
  } catch (e) {
    notice(`${path}: ${e.message}`, true);
  }
  await refresh();
}

async function refresh() {
  const parts = [clients, sessions, subscriptions, retained, plugins];
  const results = await Promise.allSettled(parts.map((f) => f()));
  const failed = results.find((r) => r.status === 'rejected');
  if (failed && failed.reason.message !== 'signed out') notice(failed.reason.message, true);
}

async function tick() {
  try {
    await sample();
  } catch (e) {
    if (e.message !== 'signed out') notice(`stats: ${e.message}`, true);
  }
}

document.getElementById('client-search').addEventListener('input', () => clients().catch(() => {}));
document.getElementById('retained-filter').addEventListener('change', () => retained().catch(() => {}));
document.getElementById('logout').addEventListener('click', async () => {
  await fetch('/ui/logout', { method: 'POST' });
  location.reload();
});

tick();
refresh();
setInterval(tick, 1000);
setInterval(refresh, 2000);
