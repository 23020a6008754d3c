// Artillery processor for the Switchboard scenarios in this directory.
//
// Everything a run needs is made through the public API, nothing is hard-coded:
//   - `createTenant` (the scripts' `before` hook, once per run, in artillery's main
//     process): POST /admin/tenants with ADMIN_TOKEN from the environment, or the
//     existing tenant's API_KEY when that is set instead. Its API key and a random run
//     prefix go to every virtual user (VU) through the context variables.
//   - per VU (the ws engine's `connect: {function}` hook, the http engine's
//     `beforeScenario`): devices (POST /v1/devices, addresses +1555<run prefix, 2
//     digits><5 digits>, a fresh address on 409), device tokens
//     (POST /v1/devices/{id}/tokens) and groups (POST /v1/groups).
//
// Why several WebSocket waits are done here and not by artillery's own `send` with
// `match`: the ws engine (node_modules/artillery/lib/core/engine_ws.ts) sets
// `ws.onmessage` only while a step with `match`/`capture` runs, and that handler takes
// the FIRST frame that arrives, whatever it is, and ends the step with it. Frames that
// arrive while no such step runs are dropped. So
//   - `ready`, which the server pushes right after the upgrade, is either dropped (it
//     came with the 101 response, before any step ran) or taken by the first waiting
//     step instead of that step's answer: `settle` below sends a `ping` and waits for its
//     `pong` while skipping anything else; the server writes `ready` before it reads
//     any frame, so after the `pong` no `ready` can come any more;
//   - live `message` frames would be taken by a step waiting for an `ack`: the sending
//     VU's device is never a recipient (its recipients are peer devices this file
//     connects itself and listens on), so its connection only ever gets answers;
//   - the handler stays attached after its step, and a second frame would end the
//     finished step again: every sending step gets exactly one answer.
// Sockets this file opens itself (peers, reconnects) have a listener from the start,
// so nothing is dropped on them.
//
// Counters this file adds to artillery's report (all prefixed `switchboard.`) are listed
// in ../README.md ("Artillery scenarios").
'use strict';

const crypto = require('node:crypto');
const { basename } = require('node:path');
const WebSocket = require('ws');

/** Bounds of every wait, so a broken server fails a VU instead of hanging it. */
const HTTP_TIMEOUT_MS = 15000;
const WS_TIMEOUT_MS = 10000;
/** How long delivered messages may trail their acks at the peers. */
const DELIVERY_WAIT_MS = 10000;
/** How long a bulk send's jobs may take to complete (the scenario fails after). */
const JOBS_DEADLINE_MS = 60000;
const POLL_INTERVAL_MS = 100;

// ---------------------------------------------------------------------------------
// Plumbing: URLs, REST calls, addresses, the errors counter.

/** The server's HTTP base URL: the script's target (`TARGET` / `--target`), ws→http. */
function httpBase(context) {
  const target = String(context.vars.target || process.env.TARGET || '');
  if (!/^(https?|wss?):\/\//.test(target)) {
    throw new Error(`set TARGET (or --target) to the server's URL, e.g. http://127.0.0.1:3000; got "${target}"`);
  }
  return target.replace(/^ws/, 'http').replace(/\/+$/, '');
}

function wsUrl(base, token) {
  return `${base.replace(/^http/, 'ws')}/v1/ws?token=${encodeURIComponent(token)}`;
}

/**
 * A VU's failure. artillery counts errors by message (`errors.<message>`), so the
 * message stays the same across VUs (no ids); the details go to stderr, the first
 * MAX_DETAILS of them per process.
 */
const MAX_DETAILS = 20;
let detailsLogged = 0;
function failure(message, detail) {
  if (detail && detailsLogged < MAX_DETAILS) {
    detailsLogged += 1;
    console.error(`switchboard processor: ${message}: ${detail}`);
  }
  return new Error(message);
}

/** One REST call; throws unless the status is one of `expect`. Returns {status, body}. */
async function api(base, method, path, token, body, expect = [200, 201]) {
  const route = `${method} ${path.replace(/\/[a-z]_[0-9a-z]+/g, '/{id}')}`;
  let res;
  let text;
  try {
    res = await fetch(base + path, {
      method,
      headers: {
        authorization: `Bearer ${token}`,
        ...(body === undefined ? {} : { 'content-type': 'application/json' }),
      },
      body: body === undefined ? undefined : JSON.stringify(body),
      signal: AbortSignal.timeout(HTTP_TIMEOUT_MS),
    });
    text = await res.text();
  } catch (err) {
    throw failure(`${route}: ${err.cause?.code || err.name}`, `${base}${path}: ${err.cause?.message || err.message}`);
  }
  let parsed = null;
  try {
    parsed = text ? JSON.parse(text) : null;
  } catch (_e) {
    throw failure(`${route}: HTTP ${res.status}, not JSON`, text.slice(0, 300));
  }
  if (!expect.includes(res.status)) {
    const code = parsed?.error?.code || '';
    throw failure(`${route}: HTTP ${res.status} ${code} (expected ${expect.join('/')})`, `${path}: ${text.slice(0, 300)}`);
  }
  return { status: res.status, body: parsed };
}

// Addresses: +1555, the run's 2-digit prefix, then a 5-digit number counting up from a
// random start in this process (workers start apart; a clash is a 409 and moves on).
let nextNumber = crypto.randomInt(100000);

async function createDevice(context, name) {
  const base = httpBase(context);
  const prefix = context.vars.runPrefix || String(crypto.randomInt(100)).padStart(2, '0');
  for (let attempt = 0; attempt < 10; attempt++) {
    const address = `+1555${prefix}${String(nextNumber % 100000).padStart(5, '0')}`;
    nextNumber += 1;
    const res = await api(base, 'POST', '/v1/devices', context.vars.apiKey, { address, name }, [201, 409]);
    if (res.status === 201) {
      return { id: res.body.device_id, address: res.body.address };
    }
    nextNumber = crypto.randomInt(100000);
  }
  throw new Error('POST /v1/devices: 10 addresses in a row were taken (409)');
}

async function createToken(context, deviceId) {
  const res = await api(httpBase(context), 'POST', `/v1/devices/${deviceId}/tokens`, context.vars.apiKey, undefined, [201]);
  return res.body.token;
}

async function createGroup(context, name, members) {
  const res = await api(httpBase(context), 'POST', '/v1/groups', context.vars.apiKey, { name, members }, [201]);
  return res.body.group_id;
}

/**
 * Counts every error artillery records (`errors.<code>`, also the ones that do not fail
 * a VU, such as a misspelt function name) as `switchboard.errors`, so one threshold
 * covers them all. Emits 0 first: a threshold on a metric that is absent fails.
 */
const counted = new WeakSet();
function countErrors(ee) {
  if (counted.has(ee)) return;
  counted.add(ee);
  ee.on('error', () => ee.emit('counter', 'switchboard.errors', 1));
  ee.emit('counter', 'switchboard.errors', 0);
}

function count(ee, name, n = 1) {
  ee.emit('counter', `switchboard.${name}`, n);
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

// ---------------------------------------------------------------------------------
// WebSocket helpers.

/**
 * Sends `frame` on `ws` and resolves with the first frame `isAnswer` accepts, skipping
 * (and returning) the others. Rejects on an `error` frame with the request's id, on a
 * close, or after `timeoutMs`.
 */
function request(ws, frame, isAnswer, timeoutMs = WS_TIMEOUT_MS) {
  // A finished engine step leaves its handler on `onmessage`: take it off, it would
  // end that step a second time.
  ws.onmessage = null;
  return new Promise((resolve, reject) => {
    const skipped = [];
    const cleanup = () => {
      clearTimeout(timer);
      ws.off('message', onMessage);
      ws.off('close', onClose);
    };
    const timer = setTimeout(() => {
      cleanup();
      reject(failure(`no answer to ${frame.type} within ${timeoutMs} ms`, `${frame.id}; skipped: ${skipped.map((f) => f.type).join(',') || 'none'}`));
    }, timeoutMs);
    const onMessage = (data) => {
      let f;
      try {
        f = JSON.parse(String(data));
      } catch (_e) {
        skipped.push({ type: 'unparsable' });
        return;
      }
      if (f.type === 'error' && f.id === frame.id) {
        cleanup();
        reject(failure(`${frame.type}: error ${f.code}`, `${frame.id}: ${f.message}`));
      } else if (isAnswer(f)) {
        cleanup();
        resolve({ answer: f, skipped });
      } else {
        skipped.push(f);
      }
    };
    const onClose = (code, reason) => {
      cleanup();
      reject(failure(`connection closed (${code}) while waiting for the answer to ${frame.type}`, `${frame.id}: ${reason}`));
    };
    ws.on('message', onMessage);
    ws.on('close', onClose);
    ws.send(JSON.stringify(frame), (err) => {
      if (err) {
        cleanup();
        reject(err);
      }
    });
  });
}

/**
 * A connection this file opens itself: a listener from the start (nothing dropped),
 * `ready` awaited, every `message` kept in `messages` (by message id) with its arrival
 * time.
 */
class Client {
  constructor(url) {
    this.ws = new WebSocket(url);
    this.messages = new Map();
    this.readyFrame = null;
    this.waiters = new Set();
    this.closed = null;
    this.ws.on('message', (data) => {
      let f;
      try {
        f = JSON.parse(String(data));
      } catch (_e) {
        return;
      }
      if (f.type === 'ready') this.readyFrame = f;
      if (f.type === 'message') this.messages.set(f.message_id, { frame: f, at: Date.now() });
      for (const w of this.waiters) w();
    });
    this.ws.on('close', (code, reason) => {
      this.closed = `${code} ${reason}`;
      for (const w of this.waiters) w();
    });
    // Handshake failures (401, refused) come as `error`, then `close`.
    this.ws.on('error', (err) => {
      this.error = err;
    });
  }

  /** Resolves once `test()` holds; rejects on close or after `timeoutMs`. */
  until(test, what, timeoutMs = WS_TIMEOUT_MS) {
    return new Promise((resolve, reject) => {
      const check = () => {
        if (test()) {
          done();
          resolve();
        } else if (this.closed !== null) {
          done();
          reject(failure(`connection closed while waiting for ${what}`, `${this.closed}${this.error ? `: ${this.error.message}` : ''}`));
        }
      };
      const timer = setTimeout(() => {
        done();
        reject(failure(`no ${what} within ${timeoutMs} ms`));
      }, timeoutMs);
      const done = () => {
        clearTimeout(timer);
        this.waiters.delete(check);
      };
      this.waiters.add(check);
      check();
    });
  }

  ready() {
    return this.until(() => this.readyFrame !== null, 'ready frame');
  }

  close() {
    if (this.ws.readyState === WebSocket.CONNECTING || this.ws.readyState === WebSocket.OPEN) {
      this.ws.close(1000, 'done');
    }
  }
}

/** Peers a VU opened, by VU id; closed with the VU's own connection (see `settle`). */
const peersOf = new Map();

function keepPeers(context, peers) {
  peersOf.set(context._uid, peers);
}

function closePeers(context) {
  for (const p of peersOf.get(context._uid) || []) p.close();
  peersOf.delete(context._uid);
}

// ---------------------------------------------------------------------------------
// `before` hook: the run's tenant.

/** Creates the run's tenant (or takes API_KEY) and picks the run's address prefix. */
async function createTenant(context, ee) {
  countErrors(ee);
  context.vars.runPrefix = String(crypto.randomInt(100)).padStart(2, '0');
  if (process.env.API_KEY) {
    context.vars.apiKey = process.env.API_KEY;
    return;
  }
  if (!process.env.ADMIN_TOKEN) {
    throw new Error('set ADMIN_TOKEN (the server\'s admin token) or API_KEY (an existing tenant\'s key)');
  }
  const name = `artillery-${context.vars.$scenarioFile ? basename(context.vars.$scenarioFile, '.yml') : 'run'}-${crypto.randomBytes(4).toString('hex')}`;
  const res = await api(httpBase(context), 'POST', '/admin/tenants', process.env.ADMIN_TOKEN, { name }, [201]);
  context.vars.apiKey = res.body.api_key;
  context.vars.tenantId = res.body.tenant_id;
  console.log(`tenant ${res.body.tenant_id} (${name}); addresses +1555${context.vars.runPrefix}xxxxx`);
}

// ---------------------------------------------------------------------------------
// Shared ws steps.

/**
 * First step after every engine `connect`: `ping`, skip everything up to its `pong`
 * (that is where a `ready` the engine did not drop ends up), and close the VU's peers
 * when its connection closes.
 */
async function settle(context, ee) {
  countErrors(ee);
  const ws = context.ws;
  ws.once('close', () => closePeers(context));
  const id = `settle-${context._uid}`;
  const { skipped } = await request(ws, { type: 'ping', id }, (f) => f.type === 'pong' && f.id === id);
  const ready = skipped.find((f) => f.type === 'ready');
  // Either way is fine; the counters show how often the engine dropped it.
  count(ee, ready ? 'ready_seen' : 'ready_dropped_by_engine');
  if (ready && ready.device_id !== context.vars.deviceId) {
    throw failure('ready names another device', `${ready.device_id}, expected ${context.vars.deviceId}`);
  }
  const other = skipped.filter((f) => f.type !== 'ready');
  if (other.length > 0) {
    throw failure('unexpected frames before the first answer', other.map((f) => f.type).join(','));
  }
}

// ---------------------------------------------------------------------------------
// ws-messaging.yml

/**
 * `connect` hook: this VU's device (it sends), a peer that gets its 1:1 messages and
 * is in its group, a second group member; their tokens; the group. Points the engine
 * at the VU's own device. The peers connect in `connectPeers`, once the VU's own
 * connection is open (so that its close closes them, whatever fails).
 */
function connectMessaging(wsArgs, context, done) {
  (async () => {
    const [me, peer, member] = await Promise.all([
      createDevice(context, 'artillery sender'),
      createDevice(context, 'artillery peer'),
      createDevice(context, 'artillery member'),
    ]);
    const [myToken, peerToken, memberToken] = await Promise.all([me, peer, member].map((d) => createToken(context, d.id)));
    const groupId = await createGroup(context, `artillery ${context._uid}`, [me.address, peer.address, member.address]);
    Object.assign(context.vars, {
      deviceId: me.id,
      address: me.address,
      peerAddress: peer.address,
      peerTokens: [peerToken, memberToken],
      groupId,
      ackedDirect: [],
      ackedGroup: [],
    });
    wsArgs.target = wsUrl(httpBase(context), myToken);
  })().then(() => done(), done);
}

/** After `settle`: the peer and the member connect and listen (their `ready` awaited). */
async function connectPeers(context) {
  const base = httpBase(context);
  const peers = context.vars.peerTokens.map((t) => new Client(wsUrl(base, t)));
  keepPeers(context, peers);
  await Promise.all(peers.map((p) => p.ready()));
}

/** Before each send: its time, carried in the body (delivery latency at the peers). */
async function markSend(context) {
  context.vars.sentAt = Date.now();
}

function acked(context, ee, list, name) {
  const id = context.vars.lastMessageId;
  if (!id) throw new Error('ack without message_id');
  list.push(id);
  count(ee, name);
  ee.emit('histogram', 'switchboard.ack_ms', Date.now() - context.vars.sentAt);
  context.vars.lastMessageId = undefined;
}

async function ackedDirect(context, ee) {
  acked(context, ee, context.vars.ackedDirect, 'acked_direct');
}

async function ackedGroup(context, ee) {
  acked(context, ee, context.vars.ackedGroup, 'acked_group');
}

/**
 * Last step: every acked message reached its recipients live (the peer: 1:1 and group;
 * the member: group), from this VU's address, in send order (increasing seq).
 */
async function checkDelivered(context, ee) {
  const [peer, member] = peersOf.get(context._uid) || [];
  if (!peer) throw new Error('peers are gone');
  const { ackedDirect: direct, ackedGroup: group, address } = context.vars;
  const expected = [
    [peer, [...direct, ...group], 'peer'],
    [member, group, 'group member'],
  ];
  for (const [client, ids, who] of expected) {
    await client.until(() => ids.every((id) => client.messages.has(id)), `delivery of ${ids.length} messages to the ${who}`, DELIVERY_WAIT_MS);
    let lastSeq = 0;
    for (const { frame, at } of client.messages.values()) {
      if (frame.from !== address) throw failure(`the ${who} got a message from another address`, `${frame.from}, expected ${address}`);
      if (frame.seq <= lastSeq) throw failure(`the ${who} got messages out of seq order`, `seq ${frame.seq} after ${lastSeq}`);
      lastSeq = frame.seq;
      if (typeof frame.body.sent_at === 'number') ee.emit('histogram', 'switchboard.delivery_ms', at - frame.body.sent_at);
    }
    if (client.messages.size !== ids.length) {
      throw failure(`the ${who} got more messages than were acked`, `${client.messages.size}, expected ${ids.length}`);
    }
    count(ee, 'delivered', ids.length);
  }
  closePeers(context);
}

// ---------------------------------------------------------------------------------
// ws-reconnect.yml

/**
 * `connect` hook: this VU's device (it connects, drops and reconnects) and a sender
 * that writes to it over REST while it is away.
 */
function connectReconnect(wsArgs, context, done) {
  (async () => {
    const [me, sender] = await Promise.all([
      createDevice(context, 'artillery reconnecting'),
      createDevice(context, 'artillery rest sender'),
    ]);
    const token = await createToken(context, me.id);
    Object.assign(context.vars, {
      deviceId: me.id,
      address: me.address,
      senderId: sender.id,
      senderAddress: sender.address,
      wsUrl: wsUrl(httpBase(context), token),
      awayIds: [],
    });
    wsArgs.target = context.vars.wsUrl;
  })().then(() => done(), done);
}

/**
 * Drops the VU's connection and waits until it is gone: on even rounds a clean close
 * (close frame), on odd rounds `terminate` (the socket just goes, as when a phone loses
 * its network).
 */
async function dropConnection(context, ee) {
  const ws = context.ws;
  ws.onmessage = null;
  const clean = Number(context.vars.$loopCount || 0) % 2 === 0;
  if (ws.readyState !== WebSocket.CLOSED) {
    await new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(failure(`connection not closed within ${WS_TIMEOUT_MS} ms`)), WS_TIMEOUT_MS);
      ws.once('close', () => {
        clearTimeout(timer);
        resolve();
      });
      if (clean) ws.close(1000, 'going away');
      else ws.terminate();
    });
  }
  count(ee, clean ? 'disconnects.close' : 'disconnects.terminate');
}

/** While the device is away: `awayMessages` sends to it over REST from the sender. */
async function sendWhileAway(context, ee) {
  const n = Number(context.vars.awayMessages) || 3;
  const ids = [];
  for (let i = 0; i < n; i++) {
    const res = await api(httpBase(context), 'POST', `/v1/devices/${context.vars.senderId}/messages`, context.vars.apiKey, {
      to: context.vars.address,
      body: { text: `while away ${i}`, vu: context._uid },
    }, [201]);
    ids.push(res.body.message_id);
  }
  context.vars.awayIds = ids;
  count(ee, 'sent_while_away', n);
}

/**
 * Opens a new connection for the device (listening from the start, so its `ready` is
 * never lost), checks `ready.last_seq` counts the messages sent while away, and makes
 * it the VU's connection: the engine's later steps use `context.ws`, and the engine
 * closes it at the end.
 */
async function reconnect(context, ee) {
  const client = new Client(context.vars.wsUrl);
  await client.ready();
  const expected = Number(context.vars.lastSeq) + context.vars.awayIds.length;
  if (client.readyFrame.last_seq !== expected) {
    client.close();
    throw failure('ready.last_seq after reconnect is not the last seq + the messages sent while away', `${client.readyFrame.last_seq}, expected ${expected} (${context.vars.lastSeq} + ${context.vars.awayIds.length})`);
  }
  context.ws = client.ws;
  count(ee, 'reconnects');
}

/**
 * `sync` from the last seq seen before the drop: the page holds exactly the messages
 * sent while away, in order, at the seqs right after it. Live frames that may come on
 * the new connection meanwhile are skipped.
 */
async function syncFromLastSeq(context, ee) {
  const after = Number(context.vars.lastSeq);
  const id = `sync-${context._uid}-${after}`;
  const { answer } = await request(context.ws, { type: 'sync', id, after_seq: after, limit: 1000 }, (f) => f.type === 'messages' && f.id === id);
  const got = answer.items.map((m) => m.message_id);
  const want = context.vars.awayIds;
  if (got.join() !== want.join()) {
    throw failure('sync did not return exactly the messages sent while away', `after_seq ${after}: [${got}], expected [${want}]`);
  }
  answer.items.forEach((m, i) => {
    if (m.seq !== after + 1 + i) throw failure('sync items are not at the seqs after the last one', `item ${i}: seq ${m.seq}, expected ${after + 1 + i}`);
    if (m.from !== context.vars.senderAddress) throw failure('a sync item is from another address', `item ${i}: ${m.from}, expected ${context.vars.senderAddress}`);
  });
  if (answer.more || answer.next_after_seq !== after + want.length) {
    throw failure('sync page has more or a wrong next_after_seq', `more=${answer.more} next_after_seq=${answer.next_after_seq}, expected false and ${after + want.length}`);
  }
  context.vars.lastSeq = answer.next_after_seq;
  count(ee, 'synced', got.length);
}

// ---------------------------------------------------------------------------------
// bulk-send.yml (http engine)

/** beforeScenario: a sender and `bulkRecipients` recipients; the bulk body. */
async function prepareBulk(context, ee) {
  countErrors(ee);
  const n = Number(context.vars.bulkRecipients) || 5;
  const devices = await Promise.all(
    Array.from({ length: n + 1 }, (_, i) => createDevice(context, i === 0 ? 'artillery bulk sender' : `artillery bulk recipient ${i}`)),
  );
  const [sender, ...recipients] = devices;
  context.vars.senderId = sender.id;
  context.vars.recipientIds = recipients.map((d) => d.id);
  context.vars.bulkBody = {
    messages: recipients.map((r, i) => ({
      device: sender.id,
      to: r.address,
      body: { text: `bulk ${i}`, vu: context._uid },
      priority: 'normal',
    })),
  };
}

/** After the 202: remember when, and start polling at the first job. */
async function startPolling(context, ee) {
  const jobs = context.vars.jobIds;
  if (!Array.isArray(jobs) || jobs.length !== context.vars.bulkBody.messages.length) {
    throw failure('bulk answered a wrong number of job ids', `${JSON.stringify(jobs)}, expected ${context.vars.bulkBody.messages.length}`);
  }
  count(ee, 'jobs_queued', jobs.length);
  context.vars.queuedAt = Date.now();
  context.vars.jobIndex = 0;
  context.vars.jobId = jobs[0];
  context.vars.jobsDone = 0;
}

/**
 * `whileTrue` of the polling loop, after each GET /v1/jobs/{jobId}: on `completed`
 * moves to the next job (none left: stop); on `failed`/`cancelled` stops (checkJobs
 * fails the VU); otherwise polls the same job again after POLL_INTERVAL_MS, until
 * JOBS_DEADLINE_MS.
 */
function pollJobs(context, next) {
  const v = context.vars;
  if (v.jobState === 'completed') {
    v.jobsDone += 1;
    if (v.jobIndex + 1 >= v.jobIds.length) return next(false);
    v.jobIndex += 1;
    v.jobId = v.jobIds[v.jobIndex];
    return next(true);
  }
  if (v.jobState === 'failed' || v.jobState === 'cancelled') return next(false);
  if (Date.now() - v.queuedAt > JOBS_DEADLINE_MS) return next(false);
  setTimeout(() => next(true), POLL_INTERVAL_MS);
}

/** After polling: every job completed (else the VU fails, naming the job). */
async function checkJobs(context, ee) {
  const v = context.vars;
  if (v.jobsDone !== v.jobIds.length) {
    throw failure(`a job ended ${v.jobState === 'failed' || v.jobState === 'cancelled' ? v.jobState : `${v.jobState} at the deadline`}`, `${v.jobId}${v.jobError ? ` (${v.jobError})` : ''} after ${Date.now() - v.queuedAt} ms; ${v.jobsDone} of ${v.jobIds.length} jobs completed`);
  }
  count(ee, 'jobs_completed', v.jobsDone);
  ee.emit('histogram', 'switchboard.jobs_ms', Date.now() - v.queuedAt);
}

// ---------------------------------------------------------------------------------
// contact-sync.yml (http engine)

function contactList(context, n, from, label) {
  // Contacts need not be devices: addresses under the run prefix, 6-digit numbers
  // that no device of this file uses (+1556…).
  const base = crypto.randomInt(1000) * 1000;
  return Array.from({ length: n }, (_, i) => ({
    address: `+1556${context.vars.runPrefix}${String(base + from + i).padStart(6, '0')}`,
    name: `${label} ${from + i}`,
  }));
}

/**
 * beforeScenario: a device; `contacts` (`contactCount` entries), and `contactsUpdate`:
 * the same addresses renamed plus `extraContacts` new ones (an upsert: the count grows
 * by the new ones only).
 */
async function prepareContacts(context, ee) {
  countErrors(ee);
  const n = Number(context.vars.contactCount) || 100;
  const extra = Number(context.vars.extraContacts) || 10;
  const device = await createDevice(context, 'artillery contacts');
  const first = contactList(context, n + extra, 0, 'contact');
  context.vars.deviceId = device.id;
  context.vars.contacts = first.slice(0, n);
  context.vars.contactsUpdate = first.map((c) => ({ address: c.address, name: `${c.name} (renamed)` }));
  context.vars.contactCount = n;
  context.vars.contactCountAfterUpdate = n + extra;
  context.vars.contactUpdateCount = n + extra;
}

/** After the last GET: counts for the report. */
async function contactsChecked(context, ee) {
  count(ee, 'contacts_upserted', context.vars.contactCount + context.vars.contactUpdateCount);
  count(ee, 'contacts_read', Number(context.vars.contactsBack) || 0);
}

module.exports = {
  createTenant,
  settle,
  connectMessaging,
  connectPeers,
  markSend,
  ackedDirect,
  ackedGroup,
  checkDelivered,
  connectReconnect,
  dropConnection,
  sendWhileAway,
  reconnect,
  syncFromLastSeq,
  prepareBulk,
  startPolling,
  pollJobs,
  checkJobs,
  prepareContacts,
  contactsChecked,
};
