// Real-browser test of the JavaScript client (clients/js), driven by tests/e2e/js_client.rs.
//
//   node tests/browser/client.mjs      (then one JSON line on stdin, see below)
//
// The first stdin line is {"base","admin","a":{"id","address","token"},"b":{…}}: the
// server (a child process of the Rust test), its admin token, and two devices with
// tokens. The script serves clients/js and a tiny test page from a static HTTP server
// on 127.0.0.1, opens two pages in headless Debian chromium; each imports the package
// through an import map built from clients/js/package.json's "exports" (the module the
// browser runs is the file in the repository) and connects as one device. The pages
// exchange numbered messages in both directions across:
//   - an operator disconnect of A (POST /admin/devices/{id}/disconnect, close 4001),
//     with sends in flight and sends issued from the `disconnect` event;
//   - B's socket closed under the client (the raw WebSocket), and `reconnect()`;
//   - B offline (its connects refused) while A's messages are stored, nothing live after;
//   - a server restart by SIGTERM (close 1012) and one by SIGKILL with sends in flight,
//     both with sends issued while the server is down. For those the script prints
//     `STOP TERM` / `STOP KILL` and waits for `STOPPED`, then `START` and waits for
//     `STARTED` (the Rust side restarts the binary on the same data dir and port);
//   - B's tab reloading and finding an older resume point than it delivered (the seen
//     ids it keeps in sessionStorage must drop the replay).
// At the end each page must have received every message of the other exactly once and
// in send order, every send must have resolved exactly once (no rejection), the acks'
// message ids must be the ids the peer received, and every message must have exactly
// one `read` status at its sender. Prints `SUMMARY {json}` and `OK`, exits 0; exits 1
// with a message otherwise. Every wait is for a condition, bounded by WAIT.
import { createServer } from 'node:http';
import { mkdtempSync, rmSync, existsSync, readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, dirname, resolve, normalize, sep, extname } from 'node:path';
import { fileURLToPath } from 'node:url';
import { createInterface } from 'node:readline';
import { chromium } from 'playwright-core';

const here = dirname(fileURLToPath(import.meta.url));
const pkgDir = resolve(here, '../../clients/js');
const executablePath = process.env.CHROMIUM || '/usr/bin/chromium';
if (!existsSync(executablePath)) {
  console.error(`chromium not found at ${executablePath}: run ./scripts/test (it installs Debian's chromium)`);
  process.exit(1);
}
const WAIT = 20000;

const lines = createInterface({ input: process.stdin });
const queued = [];
const waiters = [];
lines.on('line', (l) => (waiters.length ? waiters.shift().res(l) : queued.push(l)));
lines.on('close', () => { while (waiters.length) waiters.shift().rej(new Error('stdin closed')); });
const nextLine = () => new Promise((res, rej) => (queued.length ? res(queued.shift()) : waiters.push({ res, rej })));
const expectLine = async (want) => {
  const got = await nextLine();
  if (got !== want) throw new Error(`expected ${want} from the test driver, got ${got}`);
};

// ---- the static server: the package under /pkg/, the test page at / ----

const pkg = JSON.parse(readFileSync(join(pkgDir, 'package.json'), 'utf8'));
const entry = pkg.exports?.['.']?.default;
if (pkg.type !== 'module' || !entry || !pkg.types) throw new Error('clients/js/package.json: need "type":"module", "exports" and "types"');
const importMap = { imports: { [pkg.name]: `/pkg/${entry.replace(/^\.\//, '')}` } };

const PAGE = `<!doctype html>
<meta charset="utf-8"><title>switchboard client test</title>
<script type="importmap">${JSON.stringify(importMap)}</script>
<script type="module">
import { SwitchboardClient, webStorage } from ${JSON.stringify(pkg.name)};

const sockets = [];
let offline = false; // while set, connects go to a closed port (the network is down)
const log = {
  received: [], statuses: [], resolved: {}, acks: {}, rejected: [], disconnects: [],
  states: [], typing: [], errors: [], issued: 0, issuedWhileUp: [], outgoing: 0,
  transmitted: {}, // send request id -> times it went out
  reloads: 0, staleFrom: null,
};
class TrackedWebSocket extends WebSocket {
  constructor(url) { super(offline ? url.replace(new URL(url).host, '127.0.0.1:1'): url); sockets.push(this); }
  send(data) {
    try {
      const f = JSON.parse(data);
      if (f.type === 'send') log.transmitted[f.id] = (log.transmitted[f.id] || 0) + 1;
    } catch {}
    return super.send(data);
  }
}
let client, peer, startCfg;
const storageKey = (cfg) => 'switchboard:' + cfg.deviceId;

function sendOne(n) {
  client.send(peer, { n, text: 'message ' + n }).then(
    (ack) => { log.resolved[n] = (log.resolved[n] || 0) + 1; log.acks[n] = ack.message_id; },
    (err) => log.rejected.push({ n, code: err.code, message: err.message }));
}
function sendMany(count, mustBeDown) {
  for (let i = 0; i < count; i++) {
    const n = log.issued++;
    if (mustBeDown && client.connected) log.issuedWhileUp.push(n);
    sendOne(n);
  }
}

window.h = {
  start(cfg) {
    startCfg = cfg;
    peer = cfg.peer;
    client = new SwitchboardClient({
      url: cfg.url, token: cfg.token,
      storage: webStorage(sessionStorage, storageKey(cfg)),
      reconnect: { baseMs: 100, capMs: 800 },
      syncLimit: 7, // small pages: a resume pages several times
      WebSocket: TrackedWebSocket,
    });
    client.on('message', ({ message, outgoing }) => {
      if (outgoing) { log.outgoing++; return; }
      if (message.from !== peer) return;
      log.received.push({ n: message.body.n, id: message.message_id, seq: message.seq });
      client.markRead(message.message_id);
    });
    client.on('status', ({ status }) => log.statuses.push({ id: status.message_id, status: status.status, by: status.by }));
    client.on('disconnect', (d) => log.disconnects.push({ code: d.code, willRetry: d.willRetry }));
    client.on('state', ({ state }) => log.states.push(state));
    client.on('typing', (t) => log.typing.push(t));
    client.on('error', (e) => log.errors.push(e));
    client.connect();
  },
  send(count) { sendMany(count, false); },
  sendWhileDown(count) { sendMany(count, true); },
  // Sends from inside the disconnect event: the socket is gone at that moment.
  sendOnDisconnect(count) {
    const off = client.on('disconnect', () => { off(); sendMany(count, true); });
  },
  // The tab reloads, and the resume point it finds is older than what it delivered
  // (its last writes lost, or restored from an older copy); the seen ids are intact.
  // The new page resumes from there: every replayed entry must be dropped by id.
  reloadStale(back) {
    client.close('page reload');
    setTimeout(() => {
      const st = JSON.parse(sessionStorage.getItem(storageKey(startCfg)));
      log.staleFrom = { saved: st.lastSeq, resumeAt: Math.max(0, st.lastSeq - back) };
      st.lastSeq = log.staleFrom.resumeAt;
      sessionStorage.setItem(storageKey(startCfg), JSON.stringify(st));
      log.reloads++;
      sessionStorage.setItem('harness', JSON.stringify({ cfg: startCfg, log }));
      location.reload();
    }, 0);
  },
  goOffline() { offline = true; sockets[sockets.length - 1].close(); },
  goOnline() { offline = false; },
  dropSocket() { sockets[sockets.length - 1].close(); },
  reconnect() { client.reconnect(); },
  typing() { return client.typing(peer, 'composing'); },
  markAllRead() { client.markRead(log.received.map((r) => r.id)); },
  ping() { return client.ping(); },
  state() { return client.state; },
  connected() { return client.connected; },
  log() {
    return { ...log, state: client.state, lastSeq: client.lastSeq,
      outboxSize: client.outboxSize, address: client.address };
  },
  done(expectFromPeer) {
    const ownDone = Object.keys(log.resolved).length === log.issued && client.outboxSize === 0;
    return ownDone && log.received.length >= expectFromPeer;
  },
};
const resumed = sessionStorage.getItem('harness');
if (resumed) {
  sessionStorage.removeItem('harness');
  const saved = JSON.parse(resumed);
  Object.assign(log, saved.log);
  window.h.start(saved.cfg);
}
window.__ready = true;
</script>`;

const TYPES = { '.js': 'text/javascript', '.json': 'application/json', '.ts': 'text/plain', '.md': 'text/plain' };
const server = createServer((req, res) => {
  const url = new URL(req.url, 'http://x');
  if (url.pathname === '/favicon.ico') return res.writeHead(204).end();
  if (url.pathname === '/') {
    res.writeHead(200, { 'content-type': 'text/html; charset=utf-8' });
    return res.end(PAGE);
  }
  if (url.pathname.startsWith('/pkg/')) {
    const file = normalize(join(pkgDir, decodeURIComponent(url.pathname.slice(5))));
    if (file.startsWith(pkgDir + sep) && existsSync(file)) {
      res.writeHead(200, { 'content-type': TYPES[extname(file)] || 'application/octet-stream', 'cache-control': 'no-store' });
      return res.end(readFileSync(file));
    }
  }
  res.writeHead(404).end();
});
await new Promise((r) => server.listen(0, '127.0.0.1', r));
const pageUrl = `http://127.0.0.1:${server.address().port}/`;

// ---- the scenario ----

const profile = mkdtempSync(join(tmpdir(), 'switchboard-chromium-'));
let context;
let failed = false;
const t0 = Date.now();
const step = (s) => console.error(`[client.mjs +${((Date.now() - t0) / 1000).toFixed(1)}s] ${s}`);
try {
  const cfg = JSON.parse(await nextLine());
  context = await chromium.launchPersistentContext(profile, {
    executablePath,
    headless: true,
    args: [
      '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
      '--disable-background-networking', '--disable-component-update', '--disable-sync',
    ],
  });
  const open = async (name, me, other) => {
    const page = await context.newPage();
    page.on('console', (m) => {
      // Refused connects while the server is down are expected.
      if (m.type() === 'error' && !m.text().includes('WebSocket connection to')) console.error(`[page ${name}]`, m.text());
    });
    page.on('pageerror', (e) => console.error(`[page ${name} error]`, e.message));
    await page.goto(pageUrl);
    await page.waitForFunction(() => window.__ready === true, null, { timeout: WAIT });
    await page.evaluate((c) => window.h.start(c),
      { url: cfg.base, token: me.token, deviceId: me.id, peer: other.address });
    return { name, page, me, issued: 0 };
  };
  const A = await open('A', cfg.a, cfg.b);
  const B = await open('B', cfg.b, cfg.a);
  const call = (p, fn, ...args) => p.page.evaluate(([f, a]) => window.h[f](...a), [fn, args]);
  const send = async (p, n) => { await call(p, 'send', n); p.issued += n; };
  const sendWhileDown = async (p, n) => { await call(p, 'sendWhileDown', n); p.issued += n; };
  const sendOnDisconnect = async (p, n) => { await call(p, 'sendOnDisconnect', n); p.issued += n; };
  const waitFor = (p, what, fn, arg) =>
    p.page.waitForFunction(fn, arg, { timeout: WAIT, polling: 50 }).catch(async (e) => {
      const log = await call(p, 'log');
      throw new Error(`page ${p.name}: timed out waiting for ${what}: ${e.message}\n${JSON.stringify(log)}`);
    });
  const waitState = (p, state) => waitFor(p, `state ${state}`, (s) => window.h.state() === s, state);
  const waitDone = async () => {
    for (const [p, other] of [[A, B], [B, A]]) {
      await waitFor(p, `all ${p.issued} sends answered and ${other.issued} received`, (n) => window.h.done(n), other.issued);
    }
  };
  const waitCode = (p, code) => waitFor(p, `a disconnect with ${code}`,
    (c) => window.h.log().disconnects.some((d) => d.code === c && d.willRetry), code);
  const stopServer = async (how) => {
    console.log(`STOP ${how}`);
    await expectLine('STOPPED');
  };
  const startServer = async () => {
    console.log('START');
    await expectLine('STARTED');
  };

  await waitState(A, 'live');
  await waitState(B, 'live');
  step('both pages live');

  // Typing reaches the peer.
  if (!(await call(A, 'typing'))) throw new Error('typing not sent while live');
  await waitFor(B, 'a typing frame from A', (from) => window.h.log().typing.some((t) => t.from === from && t.state === 'composing'), cfg.a.address);

  // 1. Both directions, live.
  await send(A, 5);
  await send(B, 5);
  await waitDone();
  step('live exchange done');

  // 2. An operator disconnects A while its sends are in flight; A sends more from the
  // disconnect event, B keeps sending.
  await sendOnDisconnect(A, 5);
  await send(A, 5);
  const kick = await fetch(`${cfg.base}/admin/devices/${cfg.a.id}/disconnect`, {
    method: 'POST', headers: { authorization: `Bearer ${cfg.admin}` },
  });
  if (kick.status !== 202) throw new Error(`admin disconnect answered ${kick.status}: ${await kick.text()}`);
  await send(B, 10);
  await waitCode(A, 4001);
  await waitDone();
  step('operator disconnect done');

  // 3. B's socket is closed under the client; then A asks for a reconnect itself.
  await sendOnDisconnect(B, 5);
  await send(A, 3);
  await call(B, 'dropSocket');
  await waitDone();
  await sendOnDisconnect(A, 2);
  await send(A, 2);
  await call(A, 'reconnect');
  await send(B, 2);
  await waitDone();
  step('page-side disconnects done');

  // B's network goes away (its connects are refused) while A's messages are stored;
  // nothing live follows B's return, so only its resume `sync` can bring them.
  await call(B, 'goOffline');
  await waitFor(B, 'offline', () => !window.h.connected());
  await send(A, 4);
  await waitFor(A, 'its sends answered', () => window.h.done(0));
  await call(B, 'goOnline');
  await waitDone();
  step('offline resume done');

  // 4. SIGTERM: the server drains (1012); sends while it is down; it comes back on the
  // same port and data dir.
  await sendOnDisconnect(A, 3);
  await sendOnDisconnect(B, 3);
  await send(A, 4);
  await send(B, 4);
  await stopServer('TERM');
  await waitCode(A, 1012);
  await waitCode(B, 1012);
  for (const p of [A, B]) await waitFor(p, 'disconnected', () => !window.h.connected());
  await sendWhileDown(A, 4);
  await sendWhileDown(B, 4);
  await startServer();
  await waitDone();
  step('SIGTERM restart done');

  // 5. SIGKILL with a burst of sends in flight, more while it is down.
  await send(A, 20);
  await send(B, 20);
  await stopServer('KILL');
  for (const p of [A, B]) await waitFor(p, 'disconnected', () => !window.h.connected());
  await sendWhileDown(A, 3);
  await sendWhileDown(B, 3);
  await startServer();
  await waitDone();
  step('SIGKILL restart done');

  // 6. B's tab reloads and resumes from an older seq than it delivered (the seen ids
  // kept in sessionStorage must drop the replay); A sends while B is away.
  await Promise.all([B.page.waitForEvent('load', { timeout: WAIT }), call(B, 'reloadStale', 30)]);
  await send(A, 5);
  await B.page.waitForFunction(() => window.__ready === true, null, { timeout: WAIT });
  await waitFor(B, 'the reloaded page', () => window.h.log().reloads === 1 && window.h.state() === 'live');
  await waitDone();
  step('stale reload done');

  // A last resume with nothing new must deliver nothing twice; late receipts (some
  // were lost with the killed server) are reported again, and every sent message ends
  // with exactly one read status at its sender.
  for (const p of [A, B]) await call(p, 'reconnect');
  for (const p of [A, B]) {
    await waitState(p, 'live');
    await call(p, 'ping');
    await call(p, 'markAllRead');
  }
  for (const p of [A, B]) {
    await waitFor(p, `${p.issued} read statuses`, (n) =>
      new Set(window.h.log().statuses.filter((s) => s.status === 'read').map((s) => s.id)).size >= n, p.issued);
  }
  for (const p of [A, B]) await call(p, 'ping');

  // ---- the verdict ----
  const logs = { A: await call(A, 'log'), B: await call(B, 'log') };
  const problems = [];
  for (const [p, other] of [[A, B], [B, A]]) {
    const mine = logs[p.name];
    const theirs = logs[other.name];
    if (mine.issued !== p.issued) problems.push(`${p.name}: issued ${mine.issued}, the script counted ${p.issued}`);
    const got = mine.received.map((r) => r.n);
    const want = [...Array(other.issued).keys()];
    if (JSON.stringify(got) !== JSON.stringify(want)) {
      problems.push(`${p.name} received ${JSON.stringify(got)} from ${other.name}, want each of 0..${other.issued - 1} once, in order`);
    }
    for (let n = 0; n < p.issued; n++) {
      if (mine.resolved[n] !== 1) problems.push(`${p.name}: send ${n} resolved ${mine.resolved[n] || 0} times`);
    }
    if (mine.rejected.length) problems.push(`${p.name}: rejected sends ${JSON.stringify(mine.rejected)}`);
    if (mine.issuedWhileUp.length) problems.push(`${p.name}: sends meant for a disconnected client went out live: ${mine.issuedWhileUp}`);
    const ackIds = want.map((n) => theirs.acks[n]);
    const recvIds = mine.received.map((r) => r.id);
    if (JSON.stringify(ackIds) !== JSON.stringify(recvIds)) {
      problems.push(`${p.name}: received message ids differ from ${other.name}'s acks`);
    }
    const reads = mine.statuses.filter((s) => s.status === 'read');
    const readIds = reads.map((s) => s.id);
    if (new Set(readIds).size !== readIds.length) problems.push(`${p.name}: duplicate read statuses`);
    const myAcks = new Set(Object.values(mine.acks));
    if (readIds.length !== p.issued || !readIds.every((id) => myAcks.has(id))) {
      problems.push(`${p.name}: ${readIds.length} read statuses for ${p.issued} sends`);
    }
    if (mine.state !== 'live' || mine.outboxSize !== 0) problems.push(`${p.name}: ends ${mine.state} with ${mine.outboxSize} in the outbox`);
    const fatalErrors = mine.errors.filter((e) => e.code !== 'unavailable' && e.code !== 'rate_limited');
    if (fatalErrors.length) problems.push(`${p.name}: error frames ${JSON.stringify(fatalErrors)}`);
  }
  if (!logs.A.disconnects.some((d) => d.code === 4001)) problems.push('A never saw 4001');
  const stale = logs.B.staleFrom;
  if (!stale || stale.saved - stale.resumeAt !== 30 || logs.B.reloads !== 1) problems.push(`B's stale reload: ${JSON.stringify(stale)}`);
  const resent = (l) => Object.values(l.transmitted).filter((t) => t > 1).length;
  const summary = {
    sent: { A: A.issued, B: B.issued },
    resent: { A: resent(logs.A), B: resent(logs.B) },
    disconnects: { A: logs.A.disconnects.map((d) => d.code), B: logs.B.disconnects.map((d) => d.code) },
    lastSeq: { A: logs.A.lastSeq, B: logs.B.lastSeq },
    statuses: { A: logs.A.statuses.length, B: logs.B.statuses.length },
    staleReload: stale,
    retriedErrors: { A: logs.A.errors.length, B: logs.B.errors.length },
    seconds: (Date.now() - t0) / 1000,
  };
  console.log(`SUMMARY ${JSON.stringify(summary)}`);
  if (problems.length) throw new Error(problems.join('\n'));
  console.log('OK');
} catch (err) {
  failed = true;
  console.error('js client check failed:', err && err.stack ? err.stack : err);
} finally {
  lines.close();
  if (context) await context.close().catch(() => {});
  server.close();
  rmSync(profile, { recursive: true, force: true });
}
process.exit(failed ? 1 : 0);
