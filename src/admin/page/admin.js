// Switchboard operations page: live supervision tree over /admin/events.
//
// The admin token comes from the URL fragment (/admin#token=…, never sent to a server)
// or the sign-in form, and is kept in sessionStorage for this tab only. The stream is
// read with fetch() and an Authorization header, so the token appears in no URL.
'use strict';

const TOKEN_KEY = 'switchboard.adminToken';
const PAGE_SIZE = 50;

const view = {
  token: null,
  tenant: null,     // the expanded tenant (one at a time)
  q: '',
  offset: 0,
  tree: null,
  stream: null,     // AbortController of the running stream
  retryTimer: null,
  holding: false,   // a mouse button is down: defer re-rendering so clicks land
  pending: null,
};

const $ = (id) => document.getElementById(id);

function esc(v) {
  return String(v ?? '').replace(/[&<>"']/g, (c) => ({
    '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;',
  }[c]));
}
const n = (v) => (v ?? 0).toLocaleString('en-US');
const plural = (count, word) => (count === 1 ? word : word + 's');
function dur(secs) {
  if (secs == null) return '–';
  const d = Math.floor(secs / 86400), h = Math.floor(secs / 3600) % 24;
  const m = Math.floor(secs / 60) % 60, s = secs % 60;
  if (d) return `${d}d ${h}h`;
  if (h) return `${h}h ${String(m).padStart(2, '0')}m`;
  if (m) return `${m}m ${String(s).padStart(2, '0')}s`;
  return `${s}s`;
}
function micros(us) {
  if (us == null) return '<span class="pill pill-warn">busy</span>';
  if (us < 1000) return `${us} µs`;
  return `${(us / 1000).toFixed(us < 10000 ? 1 : 0)} ms`;
}

// ---- token -------------------------------------------------------------------

function takeTokenFromFragment() {
  const m = /(?:^#|&)token=([^&]+)/.exec(location.hash);
  if (!m) return null;
  const token = decodeURIComponent(m[1]);
  // Drop the fragment so the token is not left in the address bar or history.
  history.replaceState(null, '', location.pathname + location.search);
  return token;
}

function signIn(token) {
  view.token = token;
  sessionStorage.setItem(TOKEN_KEY, token);
  $('login').hidden = true;
  $('app').hidden = false;
  $('signout').hidden = false;
  connect();
}

function signOut(message) {
  view.token = null;
  sessionStorage.removeItem(TOKEN_KEY);
  if (view.stream) view.stream.abort();
  clearTimeout(view.retryTimer);
  $('app').hidden = true;
  $('signout').hidden = true;
  $('login').hidden = false;
  $('login-error').hidden = !message;
  $('login-error').textContent = message || '';
  setLive('idle', 'Not connected');
}

// ---- stream ------------------------------------------------------------------

function setLive(state, text) {
  const el = $('live');
  el.className = 'pill ' + ({ live: 'pill-ok', retry: 'pill-warn', idle: 'pill-idle', bad: 'pill-bad' }[state]);
  el.dataset.state = state;
  el.textContent = text;
}

function streamUrl() {
  const p = new URLSearchParams();
  if (view.tenant) p.set('tenant', view.tenant);
  if (view.q) p.set('q', view.q);
  p.set('offset', String(view.offset));
  // Collapsed and not searching: the summaries are enough, no device rows.
  p.set('limit', String(view.tenant || view.q ? PAGE_SIZE : 0));
  return '/admin/events?' + p.toString();
}

function connect() {
  if (view.stream) view.stream.abort();
  clearTimeout(view.retryTimer);
  if (!view.token) return;
  const ctl = new AbortController();
  view.stream = ctl;
  run(ctl).catch((err) => {
    if (ctl.signal.aborted) return;
    setLive('retry', 'Reconnecting…');
    console.warn('event stream ended', err);
    view.retryTimer = setTimeout(connect, 2000);
  });
}

async function run(ctl) {
  const res = await fetch(streamUrl(), {
    headers: { Authorization: 'Bearer ' + view.token, Accept: 'text/event-stream' },
    cache: 'no-store',
    signal: ctl.signal,
  });
  if (res.status === 401) {
    signOut('That admin token was not accepted.');
    return;
  }
  if (!res.ok || !res.body) throw new Error('HTTP ' + res.status);
  setLive('live', 'Live');
  const reader = res.body.pipeThrough(new TextDecoderStream()).getReader();
  let buf = '';
  for (;;) {
    const { value, done } = await reader.read();
    if (done) throw new Error('stream closed');
    buf += value;
    let cut;
    while ((cut = buf.indexOf('\n\n')) >= 0) {
      const block = buf.slice(0, cut);
      buf = buf.slice(cut + 2);
      let event = 'message';
      const data = [];
      for (const line of block.split('\n')) {
        if (line.startsWith('event:')) event = line.slice(6).trim();
        else if (line.startsWith('data:')) data.push(line.slice(5).replace(/^ /, ''));
      }
      if (!data.length) continue;
      if (event === 'error') {
        setLive('bad', 'Server error');
        continue;
      }
      setLive('live', 'Live');
      onTree(JSON.parse(data.join('\n')));
    }
  }
}

function onTree(tree) {
  view.tree = tree;
  if (view.holding) { view.pending = tree; return; }
  render(tree);
}

// ---- rendering ---------------------------------------------------------------

function render(tree) {
  view.pending = null;
  $('updated').textContent = 'updated ' + new Date(tree.generated_at).toLocaleTimeString();
  renderStats(tree);
  renderRoot(tree);
  renderTenants(tree);
  renderSearch(tree);
  renderWriters(tree);
  renderDispatcher(tree);
  renderCluster(tree);
}

// The nodes of a cluster with their liveness and load (one node: the card is hidden).
function renderCluster(tree) {
  const c = tree.cluster;
  const section = $('cluster');
  if (!c || c.mode === 'solo') { section.hidden = true; return; }
  section.hidden = false;
  $('cluster-mode').textContent = `${c.mode} · answered by ${c.node}`;
  const now = Date.now();
  const rows = c.nodes.map((nd) => `<tr data-node="${esc(nd.id)}">
    <td class="mono">${esc(nd.id)}${nd.this_node ? ' <span class="pill">this node</span>' : ''}</td>
    <td class="mono">${esc(nd.addr)}</td>
    <td>${nd.alive ? '<span class="pill pill-ok">alive</span>' : '<span class="pill pill-bad">lease lapsed</span>'}${nd.draining ? ' <span class="pill pill-warn">draining</span>' : ''}</td>
    <td class="num">${nd.lease_until ? dur(Math.max(0, (nd.lease_until - now) / 1000)) : '–'}</td>
    <td class="num">${n(nd.sessions)}</td><td class="num">${n(nd.connections)}</td>
    <td class="num">${dur((now - nd.started_at) / 1000)}</td></tr>`).join('');
  $('cluster-nodes').innerHTML = `<table><thead><tr><th>Node</th><th>Address</th><th>State</th>
    <th class="num">Lease left</th><th class="num">Devices owned</th><th class="num">Connections</th>
    <th class="num">Up</th></tr></thead><tbody>${rows}</tbody></table>`;
}

async function findOwner(deviceId) {
  const res = await fetch(`/admin/cluster/devices/${encodeURIComponent(deviceId)}`, {
    headers: { Authorization: 'Bearer ' + view.token },
  });
  const body = await res.json().catch(() => ({}));
  $('owner-answer').textContent = res.ok
    ? `${body.node} (epoch ${body.epoch}${body.node_alive ? '' : ', node gone'}${body.running_here ? ', running here' : ''})`
    : (body.error && body.error.message) || `HTTP ${res.status}`;
}

function renderStats(tree) {
  const t = tree.totals;
  const cards = [
    ['Tenants', t.tenants], ['Device sessions', t.sessions], ['Devices online', t.online],
    ['Connections', t.connections], ['Devices registered', t.devices], ['Writer backlog', t.writer_backlog],
  ];
  $('stats').innerHTML = cards.map(([label, value]) =>
    `<div class="stat"><div class="label">${label}</div><div class="value">${n(value)}</div></div>`).join('');
}

function renderRoot(tree) {
  const r = tree.root;
  const restarts = Object.values(r.restarts).reduce((a, b) => a + b, 0);
  $('root').innerHTML = `
    <span class="node-name">root</span>
    <span class="pill ${r.status === 'Running' ? 'pill-ok' : 'pill-warn'}">${esc(r.status)}</span>
    <span class="kv">actor <b class="mono">${esc(r.actor_id)}</b></span>
    <span class="kv">uptime <b>${dur(r.uptime_secs)}</b></span>
    <span class="kv">reply <b>${micros(r.reply_us)}</b></span>
    <span class="kv">child restarts <b>${n(restarts)}</b></span>
    <span class="kv">children <b>${n(tree.totals.tenant_supervisors)}</b> ${plural(tree.totals.tenant_supervisors, 'tenant supervisor')} ·
      <b>${n(tree.writers.length)}</b> ${plural(tree.writers.length, 'writer')}${tree.dispatcher ? ' · <b>1</b> dispatcher' : ''}</span>`;
}

function renderTenants(tree) {
  const rows = tree.tenants.map((t) => {
    const open = view.tenant === t.id;
    let html = `<tr class="tenant-row${open ? ' open' : ''}" data-tenant-id="${esc(t.id)}" data-toggle="${esc(t.id)}">
      <td><span class="chev">▸</span> <span class="tenant-name">${esc(t.name)}</span>
        <span class="muted mono">${esc(t.id)}</span></td>
      <td>${t.running ? '<span class="pill pill-ok">running</span>' : '<span class="pill pill-idle">idle</span>'}</td>
      <td class="num">${n(t.devices)}</td>
      <td class="num">${n(t.sessions)}</td>
      <td class="num">${n(t.online)}</td>
      <td class="num">${n(t.connections)}</td>
      <td class="num">${n(t.messages_in)} / ${n(t.messages_out)}</td>
      <td class="num">${n(t.restarts)} / ${n(t.session_restarts)}</td>
    </tr>`;
    if (open) {
      // Until the stream for this tenant delivers, the last page belongs to another view.
      const mine = tree.devices && tree.devices.tenant === t.id;
      html += `<tr><td colspan="8" class="devices-cell">${mine ? deviceTable(tree.devices, false) : '<div class="empty">Loading device sessions…</div>'}</td></tr>`;
    }
    return html;
  }).join('');
  $('tenants').innerHTML = tree.tenants.length ? `<table>
    <thead><tr><th>Tenant</th><th>Supervisor</th><th class="num">Devices</th><th class="num">Sessions</th>
      <th class="num">Online</th><th class="num">Clients</th><th class="num">Msgs in / out</th>
      <th class="num">Restarts (sup / sessions)</th></tr></thead>
    <tbody>${rows}</tbody></table>` : '<div class="empty">No tenants yet.</div>';
}

function renderSearch(tree) {
  const el = $('search-results');
  if (!view.q || view.tenant) { el.innerHTML = ''; return; }
  const mine = tree.devices && !tree.devices.tenant && tree.devices.q === view.q.toLowerCase();
  el.innerHTML = `<div class="section-label">Device sessions matching “${esc(view.q)}”</div>${mine ? deviceTable(tree.devices, true) : '<div class="empty">Searching…</div>'}`;
}

function tenantName(id) {
  const t = view.tree && view.tree.tenants.find((x) => x.id === id);
  return t ? t.name : id;
}

function deviceTable(page, withTenant) {
  if (!page || !page.items) return '';
  if (!page.items.length) {
    return `<div class="empty">${page.q ? 'No running session matches.' : 'No running device sessions. Sessions start when a device connects or receives a message.'}</div>`;
  }
  const rows = page.items.map((d) => {
    const state = d.state === 'stopping' ? '<span class="pill pill-warn">stopping</span>'
      : d.online ? '<span class="pill pill-ok">online</span>' : '<span class="pill pill-idle">no clients</span>';
    return `<tr data-device-id="${esc(d.id)}" data-online="${d.online}" data-connections="${d.connections}">
      <td><span class="mono">${esc(d.address)}</span><div class="muted small mono">${esc(d.actor)}</div></td>
      ${withTenant ? `<td class="nowrap" title="${esc(d.tenant_id)}">${esc(tenantName(d.tenant_id))}</td>` : ''}
      <td>${state}</td>
      <td class="num">${n(d.connections)}</td>
      <td class="num">${n(d.messages_in)} / ${n(d.messages_out)}</td>
      <td class="num">${micros(d.mailbox_wait_us)}</td>
      <td class="num">${n(d.handled)}</td>
      <td class="num">${n(d.restarts)}</td>
      <td class="num">${dur(d.uptime_secs)}</td>
      <td><div class="actions">
        <button class="btn btn-sm" data-action="disconnect" data-device="${esc(d.id)}" data-label="${esc(d.address)}" ${d.connections ? '' : 'disabled'}>Disconnect</button>
        <button class="btn btn-sm btn-danger" data-action="restart" data-device="${esc(d.id)}" data-label="${esc(d.address)}">Restart</button>
      </div></td>
    </tr>`;
  }).join('');
  const from = page.offset + 1, to = page.offset + page.items.length;
  return `<div class="table-wrap"><table>
    <thead><tr><th>Device actor</th>${withTenant ? '<th>Tenant</th>' : ''}<th>State</th><th class="num">Clients</th>
      <th class="num">Msgs in / out</th><th class="num">Mailbox wait</th><th class="num">Handled</th>
      <th class="num">Restarts</th><th class="num">Uptime</th><th></th></tr></thead>
    <tbody>${rows}</tbody></table></div>
    <div class="pager"><span>${n(from)}–${n(to)} of ${n(page.total)} running sessions</span>
      <span class="btns">
        <button class="btn btn-sm" data-page="-1" ${page.offset > 0 ? '' : 'disabled'}>‹ Previous</button>
        <button class="btn btn-sm" data-page="1" ${to < page.total ? '' : 'disabled'}>Next ›</button>
      </span></div>`;
}

function renderWriters(tree) {
  const rows = tree.writers.map((w) => `<tr data-writer="${w.slot}">
    <td class="mono">${esc(w.name)}</td>
    <td class="num">${n(w.batches)}</td><td class="num">${n(w.rows)}</td>
    <td class="num">${n(w.last_batch)}</td><td class="num">${w.batches ? micros(w.last_commit_us) : '–'}</td>
    <td class="num">${w.backlog ? `<span class="pill pill-warn">${n(w.backlog)}</span>` : '0'}</td>
    <td class="num">${n(w.restarts)}</td></tr>`).join('');
  $('writers').innerHTML = `<table><thead><tr><th>Writer actor</th><th class="num">Batches</th>
    <th class="num">Rows</th><th class="num">Last batch</th><th class="num">Last commit</th>
    <th class="num">Backlog</th><th class="num">Restarts</th></tr></thead><tbody>${rows}</tbody></table>`;
}

// Queue dispatcher (a child of root) and its lanes: depth (waiting + delayed), jobs in
// flight, completion rate, paused flag, with pause/resume per lane.
function renderDispatcher(tree) {
  const section = $('dispatcher');
  const d = tree.dispatcher;
  if (!d) { section.hidden = true; return; }
  section.hidden = false;
  $('dispatcher-head').innerHTML = `
    <span class="node-name">dispatcher</span>
    <span class="pill ${d.running ? 'pill-ok' : 'pill-warn'}">${d.running ? 'Running' : 'Restarting'}</span>
    <span class="kv">actor <b class="mono">${esc(d.actor_id ?? '–')}</b></span>
    <span class="kv">in flight <b>${n(d.lanes.reduce((a, l) => a + l.active, 0))}</b> / ${n(d.concurrency)}</span>
    <span class="kv">restarts <b>${n(d.restarts)}</b></span>`;
  const rows = d.lanes.map((l) => `<tr data-lane="${esc(l.lane)}">
    <td><span class="lane-name">${esc(l.lane)}</span></td>
    <td>${l.paused ? '<span class="pill pill-warn">Paused</span>' : '<span class="pill pill-ok">Running</span>'}</td>
    <td class="num" data-col="depth">${n(l.depth)}</td>
    <td class="num" data-col="active">${n(l.active)}</td>
    <td class="num" data-col="rate">${l.rate.toFixed(l.rate < 10 ? 1 : 0)}/s</td>
    <td><div class="actions">${l.paused
      ? `<button class="btn btn-sm" data-lane-action="resume" data-lane="${esc(l.lane)}">Resume</button>`
      : `<button class="btn btn-sm btn-danger" data-lane-action="pause" data-lane="${esc(l.lane)}">Pause</button>`}</div></td></tr>`).join('');
  $('dispatcher-body').innerHTML = `<table><thead><tr><th>Lane</th><th>State</th>
    <th class="num">Depth</th><th class="num">In flight</th><th class="num">Rate</th><th></th></tr></thead>
    <tbody>${rows}</tbody></table>`;
}

// ---- actions -----------------------------------------------------------------

function toast(text, bad) {
  const el = $('toast');
  el.textContent = text;
  el.className = 'toast' + (bad ? ' bad' : '');
  el.hidden = false;
  clearTimeout(toast.timer);
  toast.timer = setTimeout(() => { el.hidden = true; }, 4000);
}

async function act(action, deviceId, label) {
  const question = action === 'restart'
    ? `Restart the session actor of ${label}?\n\nIts clients are disconnected (1012) and reconnect.`
    : `Disconnect every client of ${label}?\n\nThey are closed with code 4001 (kicked).`;
  if (!confirm(question)) return;
  const res = await fetch(`/admin/devices/${encodeURIComponent(deviceId)}/${action}`, {
    method: 'POST',
    headers: { Authorization: 'Bearer ' + view.token },
  });
  if (res.ok) {
    toast(action === 'restart' ? `Restarting ${label}` : `Disconnected the clients of ${label}`);
  } else {
    let msg = 'HTTP ' + res.status;
    try { msg = (await res.json()).error.message; } catch (_) { /* keep status */ }
    toast(`${action} failed: ${msg}`, true);
  }
}

async function laneAction(action, lane) {
  const question = action === 'pause'
    ? `Pause the ${lane} lane?\n\nThe dispatcher stops claiming its jobs; they stay queued until you resume it.`
    : `Resume the ${lane} lane?`;
  if (!confirm(question)) return;
  const res = await fetch(`/admin/queues/lanes/${encodeURIComponent(lane)}/${action}`, {
    method: 'POST',
    headers: { Authorization: 'Bearer ' + view.token },
  });
  if (res.ok) {
    toast(action === 'pause' ? `Paused the ${lane} lane` : `Resumed the ${lane} lane`);
  } else {
    let msg = 'HTTP ' + res.status;
    try { msg = (await res.json()).error.message; } catch (_) { /* keep status */ }
    toast(`${action} failed: ${msg}`, true);
  }
}

function onClick(ev) {
  const btn = ev.target.closest('button');
  if (btn && btn.dataset.laneAction) {
    laneAction(btn.dataset.laneAction, btn.dataset.lane);
    return;
  }
  if (btn && btn.dataset.action) {
    act(btn.dataset.action, btn.dataset.device, btn.dataset.label);
    return;
  }
  if (btn && btn.dataset.page) {
    view.offset = Math.max(0, view.offset + Number(btn.dataset.page) * PAGE_SIZE);
    connect();
    return;
  }
  const row = ev.target.closest('[data-toggle]');
  if (row) {
    const id = row.dataset.toggle;
    view.tenant = view.tenant === id ? null : id;
    view.offset = 0;
    if (view.tree) render(view.tree);
    connect();
  }
}

function init() {
  document.addEventListener('click', onClick);
  document.addEventListener('mousedown', () => { view.holding = true; });
  document.addEventListener('mouseup', () => {
    view.holding = false;
    if (view.pending) setTimeout(() => view.pending && render(view.pending), 0);
  });
  let debounce;
  $('search').addEventListener('input', (ev) => {
    clearTimeout(debounce);
    debounce = setTimeout(() => {
      view.q = ev.target.value.trim();
      view.offset = 0;
      connect();
    }, 250);
  });
  $('login-form').addEventListener('submit', (ev) => {
    ev.preventDefault();
    const token = $('login-token').value.trim();
    if (token) signIn(token);
  });
  $('signout').addEventListener('click', () => signOut());
  $('owner-form').addEventListener('submit', (ev) => {
    ev.preventDefault();
    const id = $('owner-device').value.trim();
    if (id) findOwner(id);
  });
  const token = takeTokenFromFragment() || sessionStorage.getItem(TOKEN_KEY);
  if (token) signIn(token); else signOut();
}

init();
