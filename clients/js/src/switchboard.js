// Switchboard WebSocket client: an ES module with no dependencies and no build step.
//
// It owns one device connection: it connects with a device token, reconnects with
// capped exponential backoff and full jitter (except on the close codes that say
// "do not retry"), resumes every (re)connect with `sync` from the last seq it has seen,
// and hands each inbox entry to the application once, in inbox order. Sends wait in a
// bounded outbox until acknowledged and are resent after a reconnect under the same
// request id, so the server's idempotency (the device's last 1,024 ids) makes each send
// happen once. See README.md next to this file and protocol/README.md in the server.

/** Close codes of the server (protocol/README.md). */
export const CloseCode = Object.freeze({
  NORMAL: 1000,
  GOING_AWAY: 1001,
  PROTOCOL_ERROR: 1002,
  ABNORMAL: 1006,
  INVALID_TEXT: 1007,
  POLICY: 1008,
  TOO_LARGE: 1009,
  RESTARTING: 1012,
  HEARTBEAT_TIMEOUT: 4000,
  KICKED: 4001,
  TOKEN_EXPIRED: 4401,
  TOO_SLOW: 4408,
  DEVICE_DELETED: 4410,
});

/**
 * Close codes after which the client does not reconnect: the same connection would be
 * refused or closed again. 4401 is retried when `token` is a function (it is asked for
 * a fresh token).
 */
export const FATAL_CLOSE_CODES = Object.freeze([1002, 1007, 1008, 1009, 4401, 4410]);

const DEFAULTS = Object.freeze({
  syncLimit: 200,
  maxOutbox: 512,
  maxSeen: 5000,
  maxPending: 2000,
  maxReceiptIds: 10000,
  maxFrameBytes: 80 * 1024,
  gapSyncMs: 1000,
  connectTimeoutMs: 15000,
  heartbeatMs: 0,
  autoDelivered: false,
});

const RECONNECT_DEFAULTS = Object.freeze({ baseMs: 500, capMs: 30000, maxAttempts: Infinity });

const RETRYABLE = new Set(['rate_limited', 'unavailable']);

/** An error the client rejects a promise with: a server error code or a client one. */
export class SwitchboardError extends Error {
  constructor(code, message, details = {}) {
    super(message || code);
    this.name = 'SwitchboardError';
    this.code = code;
    this.retryAfterMs = details.retryAfterMs;
    this.sent = details.sent === true;
    this.frame = details.frame;
  }
}

/** A storage that keeps state in memory only (the default): it lives as long as the page. */
export function memoryStorage() {
  let saved = null;
  return {
    load() { return saved; },
    save(state) { saved = { lastSeq: state.lastSeq, seen: state.seen.slice() }; },
  };
}

/**
 * A storage over a Web Storage object (`sessionStorage`, `localStorage`) under `key`.
 * Use one key per device. Errors (quota, private mode) are ignored: memory stays authoritative.
 */
export function webStorage(storage, key) {
  return {
    load() {
      try {
        const raw = storage.getItem(key);
        return raw ? JSON.parse(raw) : null;
      } catch {
        return null;
      }
    },
    save(state) {
      try {
        storage.setItem(key, JSON.stringify(state));
      } catch {
        // quota or disabled storage: keep going on memory
      }
    },
  };
}

/** A set that forgets its oldest keys beyond `max`. */
class BoundedSet {
  constructor(max) {
    this.max = max;
    this.map = new Map();
  }
  has(key) { return this.map.has(key); }
  add(key) {
    if (this.map.has(key)) return;
    this.map.set(key, true);
    while (this.map.size > this.max) this.map.delete(this.map.keys().next().value);
  }
  values() { return [...this.map.keys()]; }
  get size() { return this.map.size; }
}

function randomPart() {
  const c = globalThis.crypto;
  if (c && typeof c.getRandomValues === 'function') {
    const bytes = c.getRandomValues(new Uint8Array(8));
    return [...bytes].map((b) => b.toString(16).padStart(2, '0')).join('');
  }
  return Math.random().toString(16).slice(2, 14).padEnd(12, '0');
}

function byteLength(text) {
  return typeof TextEncoder === 'function' ? new TextEncoder().encode(text).length : text.length * 3;
}

/** Seconds-since-epoch `exp` of a JWT, or undefined when it is not one. */
function jwtExpiry(token) {
  const parts = typeof token === 'string' ? token.split('.') : [];
  if (parts.length !== 3 || typeof atob !== 'function') return undefined;
  try {
    const b64 = parts[1].replace(/-/g, '+').replace(/_/g, '/');
    const exp = JSON.parse(atob(b64 + '='.repeat((4 - (b64.length % 4)) % 4))).exp;
    return typeof exp === 'number' ? exp : undefined;
  } catch {
    return undefined;
  }
}

function wsEndpoint(url) {
  let u = String(url).replace(/^http(s?):\/\//i, 'ws$1://').replace(/\/+$/, '');
  if (!/\/v1\/ws$/.test(u)) u += '/v1/ws';
  return u;
}

function makeEvent(type, detail) {
  if (typeof CustomEvent === 'function') return new CustomEvent(type, { detail });
  const ev = new Event(type);
  Object.defineProperty(ev, 'detail', { value: detail });
  return ev;
}

/**
 * One device's connection to a Switchboard server.
 *
 * Events (an `EventTarget`: `addEventListener(type, e => e.detail)`, or `on(type, detail => …)`):
 * `state`, `ready`, `disconnect`, `closed`, `frame` (every frame received), `ack`, `error`,
 * `messages`, `typing`, `pong` (those frames as received), `message` and `status` (inbox
 * entries, deduplicated and in seq order, live or from `sync`), `reset`.
 */
export class SwitchboardClient extends EventTarget {
  constructor(options) {
    super();
    if (!options || !options.url) throw new TypeError('SwitchboardClient: `url` is required');
    if (!options.token) throw new TypeError('SwitchboardClient: `token` is required');
    const o = { ...DEFAULTS, ...options };
    this._endpoint = wsEndpoint(o.url);
    this._token = o.token;
    this._storage = o.storage || memoryStorage();
    this._reconnect = { ...RECONNECT_DEFAULTS, ...(o.reconnect || {}) };
    this._syncLimit = Math.min(1000, Math.max(1, o.syncLimit | 0));
    this._maxOutbox = Math.max(1, o.maxOutbox | 0);
    this._maxPending = Math.max(1, o.maxPending | 0);
    this._maxReceiptIds = Math.max(1, o.maxReceiptIds | 0);
    this._maxFrameBytes = o.maxFrameBytes;
    this._gapSyncMs = o.gapSyncMs;
    this._connectTimeoutMs = o.connectTimeoutMs;
    this._heartbeatOverride = o.heartbeatMs;
    this._autoDelivered = !!o.autoDelivered;
    this._WebSocket = o.WebSocket || globalThis.WebSocket;
    if (typeof this._WebSocket !== 'function') throw new TypeError('SwitchboardClient: no WebSocket implementation');
    this._random = typeof o.random === 'function' ? o.random : Math.random;
    this._idPrefix = o.idPrefix || `c${randomPart()}`;

    this._state = 'idle';
    this._ws = null;
    this._gen = 0; // bumps with every socket; late events of an old socket are ignored
    this._attempt = 0;
    this._reconnectTimer = null;
    this._connectTimer = null;
    this._heartbeatTimer = null;
    this._gapTimer = null;
    this._lastRx = 0;
    this._heartbeatMs = 0;
    this._nextId = 0;
    this._sync = null; // { id, again }
    this._loaded = null;

    this._lastSeq = 0;
    this._seen = new BoundedSet(Math.max(1, o.maxSeen | 0));
    this._pending = new Map(); // seq -> { item, live }: entries past a gap
    this._ownHeld = new Map(); // message_id -> item: own copies that may be an unacked send
    this._outbox = new Map(); // request id -> entry, in send order
    this._receipts = []; // { ids, status } waiting for a connection
    this._receiptsQueued = 0;
    this._pings = new Map(); // ping id -> { resolve, reject, at }
    this._saveQueued = false;

    this.deviceId = null;
    this.tenantId = null;
    this.address = null;
  }

  // ---- public state ----

  /** `idle` | `connecting` | `syncing` | `live` | `reconnecting` | `closed`. */
  get state() { return this._state; }
  /** Highest seq up to which every inbox entry has been handled. */
  get lastSeq() { return this._lastSeq; }
  /** Whether a socket is open and past `ready` (sends go out at once). */
  get connected() { return this._state === 'syncing' || this._state === 'live'; }
  /** Sends not yet answered. */
  get outboxSize() { return this._outbox.size; }

  /** Listens for `type`; the listener gets the event's detail. Returns a function that stops it. */
  on(type, listener) {
    this._wrapped ||= new Map();
    if (!this._wrapped.has(type)) this._wrapped.set(type, new Map());
    const forType = this._wrapped.get(type);
    if (!forType.has(listener)) {
      const wrapped = (e) => listener(e.detail);
      forType.set(listener, wrapped);
      this.addEventListener(type, wrapped);
    }
    return () => this.off(type, listener);
  }

  /** Stops a listener added with `on`. */
  off(type, listener) {
    const forType = this._wrapped && this._wrapped.get(type);
    const wrapped = forType && forType.get(listener);
    if (!wrapped) return;
    forType.delete(listener);
    this.removeEventListener(type, wrapped);
  }

  // ---- lifecycle ----

  /** Starts connecting (loading the storage first). Returns this client. */
  connect() {
    if (this._state === 'closed') throw new SwitchboardError('closed', 'the client was closed');
    if (this._state !== 'idle') return this;
    this._setState('connecting');
    this._loaded = Promise.resolve()
      .then(() => this._storage.load())
      .catch(() => null)
      .then((saved) => {
        if (saved && Number.isSafeInteger(saved.lastSeq) && saved.lastSeq > this._lastSeq) {
          this._lastSeq = saved.lastSeq;
        }
        if (saved && Array.isArray(saved.seen)) for (const k of saved.seen) this._seen.add(String(k));
        if (this._state !== 'closed') this._open();
      });
    return this;
  }

  /** Drops the current socket and connects again at once (e.g. after a network change). */
  reconnect() {
    if (this._state === 'closed' || this._state === 'idle') return;
    if (this._reconnectTimer) {
      clearTimeout(this._reconnectTimer);
      this._reconnectTimer = null;
      this._open();
      return;
    }
    if (this._ws) this._lost(CloseCode.NORMAL, 'reconnect requested', true, 0);
  }

  /**
   * Closes for good: no reconnect. Sends still in the outbox are rejected with code
   * `closed` (`error.sent` tells whether one went out, so it may have happened).
   */
  close(reason = 'closed by the client') {
    if (this._state === 'closed') return;
    const ws = this._ws;
    this._detach();
    if (ws) {
      try { ws.close(1000, reason.slice(0, 120)); } catch { /* already closing */ }
    }
    this._shutdown(CloseCode.NORMAL, reason, false);
  }

  /** Forces a `sync` from `lastSeq` (it also runs on every reconnect and after a gap). */
  resync() {
    if (this.connected) this._startSync();
  }

  // ---- requests ----

  /**
   * Sends `body` (a JSON object) to an E.164 address, or to a group with
   * `{ group }` as `to`. Resolves with the ack once the message is durable; rejects on a
   * refusal (`SwitchboardError` with the server's code), when the outbox is full
   * (`outbox_full`), the frame too large (`too_large`) or the client closed (`closed`).
   */
  send(to, body, options = {}) {
    return new Promise((resolve, reject) => {
      if (this._state === 'closed') return reject(new SwitchboardError('closed', 'the client was closed'));
      if (!body || typeof body !== 'object' || Array.isArray(body)) {
        return reject(new SwitchboardError('bad_request', '`body` must be a JSON object'));
      }
      const target = typeof to === 'string' ? { to } : to && to.group ? { group: to.group } : null;
      if (!target) return reject(new SwitchboardError('bad_request', '`to` must be an address or { group }'));
      if (this._outbox.size >= this._maxOutbox) {
        return reject(new SwitchboardError('outbox_full', `more than ${this._maxOutbox} sends unanswered`));
      }
      const id = options.id || `${this._idPrefix}.${++this._nextId}`;
      if (this._outbox.has(id)) return reject(new SwitchboardError('bad_request', `request id ${id} is in use`));
      const frame = { type: 'send', id, ...target, body };
      if (options.priority) frame.priority = options.priority;
      const text = JSON.stringify(frame);
      if (byteLength(text) > this._maxFrameBytes) {
        return reject(new SwitchboardError('too_large', `the frame is over ${this._maxFrameBytes} bytes`));
      }
      const entry = { id, text, resolve, reject, sent: false, timer: null, retries: 0 };
      this._outbox.set(id, entry);
      if (this.connected) this._transmitSend(entry);
    });
  }

  /** Reports `delivered` or `read` for received messages; queued while disconnected. */
  receipt(messageIds, status) {
    const ids = (Array.isArray(messageIds) ? messageIds : [messageIds]).filter((x) => typeof x === 'string');
    if (!ids.length || this._state === 'closed') return;
    if (status !== 'delivered' && status !== 'read') throw new TypeError('status must be delivered or read');
    for (let i = 0; i < ids.length; i += 1000) {
      const chunk = { ids: ids.slice(i, i + 1000), status };
      this._receipts.push(chunk);
      this._receiptsQueued += chunk.ids.length;
    }
    // Bounded: the oldest receipts go first (a read receipt later covers them anyway).
    while (this._receiptsQueued > this._maxReceiptIds && this._receipts.length > 1) {
      this._receiptsQueued -= this._receipts.shift().ids.length;
    }
    if (this.connected) this._flushReceipts();
  }

  /** `receipt(ids, 'delivered')`. */
  markDelivered(messageIds) { this.receipt(messageIds, 'delivered'); }

  /** `receipt(ids, 'read')`. */
  markRead(messageIds) { this.receipt(messageIds, 'read'); }

  /** A typing indicator to an address or `{ group }`; dropped (returns false) while disconnected. */
  typing(to, state = 'composing') {
    const target = typeof to === 'string' ? { to } : to && to.group ? { group: to.group } : null;
    if (!target) throw new TypeError('`to` must be an address or { group }');
    if (state !== 'composing' && state !== 'paused') throw new TypeError('state must be composing or paused');
    return this._transmit({ type: 'typing', ...target, state });
  }

  /** An application ping; resolves with the round trip in ms, rejects if the socket goes first. */
  ping() {
    return new Promise((resolve, reject) => {
      const id = `p.${++this._nextId}`;
      if (!this.connected || !this._transmit({ type: 'ping', id })) {
        return reject(new SwitchboardError('disconnected', 'not connected'));
      }
      this._pings.set(id, { resolve, reject, at: Date.now() });
    });
  }

  // ---- socket ----

  async _open() {
    const gen = ++this._gen;
    this._reconnectTimer = null;
    this._setState('connecting');
    let token;
    try {
      token = typeof this._token === 'function' ? await this._token() : this._token;
    } catch (err) {
      if (gen === this._gen && this._state !== 'closed') this._lost(CloseCode.ABNORMAL, `token provider failed: ${err}`, false);
      return;
    }
    if (gen !== this._gen || this._state === 'closed') return;
    const exp = jwtExpiry(token);
    if (exp !== undefined && exp * 1000 <= Date.now() && typeof this._token !== 'function') {
      this._shutdown(CloseCode.TOKEN_EXPIRED, 'the token has expired', true);
      return;
    }
    let ws;
    try {
      ws = new this._WebSocket(`${this._endpoint}?token=${encodeURIComponent(token)}`);
    } catch (err) {
      this._lost(CloseCode.ABNORMAL, String(err), false);
      return;
    }
    this._ws = ws;
    ws.onmessage = (ev) => { if (gen === this._gen) this._onText(ev.data); };
    ws.onclose = (ev) => { if (gen === this._gen) this._lost(ev.code, ev.reason || '', ev.wasClean); };
    ws.onerror = () => {}; // a close event follows
    this._connectTimer = setTimeout(() => {
      if (gen === this._gen && this._state === 'connecting') this._lost(CloseCode.ABNORMAL, 'connect timeout', false);
    }, this._connectTimeoutMs);
  }

  /** Stops listening to the current socket (its late events are ignored). */
  _detach() {
    this._gen++;
    const ws = this._ws;
    this._ws = null;
    if (ws) ws.onmessage = ws.onclose = ws.onerror = null;
    for (const t of ['_connectTimer', '_heartbeatTimer', '_gapTimer']) {
      if (this[t]) clearTimeout(this[t]);
      this[t] = null;
    }
    this._sync = null;
    for (const p of this._pings.values()) p.reject(new SwitchboardError('disconnected', 'the socket closed'));
    this._pings.clear();
    return ws;
  }

  /** The socket is gone (closed, timed out, or dropped on purpose): retry or stop. */
  _lost(code, reason, wasClean, delayOverride) {
    const ws = this._detach();
    if (ws && ws.readyState <= 1) {
      try { ws.close(1000, 'client reconnecting'); } catch { /* ignore */ }
    }
    if (this._state === 'closed') return;
    const fatal = FATAL_CLOSE_CODES.includes(code) && !(code === CloseCode.TOKEN_EXPIRED && typeof this._token === 'function');
    const attempt = ++this._attempt;
    if (fatal || attempt > this._reconnect.maxAttempts) {
      this.dispatchEvent(makeEvent('disconnect', { code, reason, wasClean, willRetry: false, delayMs: 0, attempt }));
      this._shutdown(code, reason, true);
      return;
    }
    const ceiling = Math.min(this._reconnect.capMs, this._reconnect.baseMs * 2 ** (attempt - 1));
    const delayMs = delayOverride ?? Math.floor(this._random() * ceiling);
    this._setState('reconnecting');
    this._reconnectTimer = setTimeout(() => this._open(), delayMs);
    this.dispatchEvent(makeEvent('disconnect', { code, reason, wasClean, willRetry: true, delayMs, attempt }));
  }

  _shutdown(code, reason, fromServer) {
    if (this._reconnectTimer) clearTimeout(this._reconnectTimer);
    this._reconnectTimer = null;
    this._detach();
    const outbox = [...this._outbox.values()];
    this._outbox.clear();
    for (const e of outbox) {
      if (e.timer) clearTimeout(e.timer);
      e.reject(new SwitchboardError('closed', fromServer ? `closed by the server (${code})` : 'the client was closed', { sent: e.sent }));
    }
    this._releaseOwnHeld();
    this._saveNow();
    this._setState('closed');
    this.dispatchEvent(makeEvent('closed', { code, reason }));
  }

  _setState(state) {
    if (this._state === state) return;
    const previous = this._state;
    this._state = state;
    this.dispatchEvent(makeEvent('state', { state, previous }));
  }

  _transmit(frame) {
    if (!this._ws || this._ws.readyState !== 1) return false;
    try {
      this._ws.send(typeof frame === 'string' ? frame : JSON.stringify(frame));
      return true;
    } catch {
      return false;
    }
  }

  _transmitSend(entry) {
    if (this._transmit(entry.text)) entry.sent = true;
  }

  _flushReceipts() {
    while (this._receipts.length && this.connected) {
      const r = this._receipts[0];
      const id = `r.${++this._nextId}`;
      if (!this._transmit({ type: 'receipt', id, message_ids: r.ids, status: r.status })) return;
      this._receipts.shift();
      this._receiptsQueued -= r.ids.length;
      // Kept briefly so a rate_limited answer can put it back.
      (this._receiptsSent ||= new Map()).set(id, r);
      if (this._receiptsSent.size > 64) this._receiptsSent.delete(this._receiptsSent.keys().next().value);
    }
  }

  _armHeartbeat() {
    if (this._heartbeatTimer) clearTimeout(this._heartbeatTimer);
    const period = this._heartbeatMs;
    if (!period) return;
    this._heartbeatTimer = setTimeout(() => {
      this._heartbeatTimer = null;
      if (!this.connected) return;
      const idle = Date.now() - this._lastRx;
      if (idle >= 2 * period) {
        this._lost(CloseCode.HEARTBEAT_TIMEOUT, 'no frame from the server (heartbeat)', false);
        return;
      }
      if (idle >= period) this._transmit({ type: 'ping', id: `hb.${++this._nextId}` });
      this._armHeartbeat();
    }, Math.max(100, Math.floor(period / 2)));
  }

  // ---- frames in ----

  _onText(data) {
    if (typeof data !== 'string') return;
    let f;
    try {
      f = JSON.parse(data);
    } catch {
      return;
    }
    if (!f || typeof f !== 'object') return;
    this._lastRx = Date.now();
    this.dispatchEvent(makeEvent('frame', { frame: f }));
    switch (f.type) {
      case 'ready': this._onReady(f); break;
      case 'ack': this._onAck(f); break;
      case 'error': this._onError(f); break;
      case 'message':
      case 'status': this._entry(f, true); break;
      case 'messages': this.dispatchEvent(makeEvent('messages', f)); this._onPage(f); break;
      case 'typing': this.dispatchEvent(makeEvent('typing', f)); break;
      case 'pong': {
        const p = this._pings.get(f.id);
        if (p) { this._pings.delete(f.id); p.resolve(Date.now() - p.at); }
        this.dispatchEvent(makeEvent('pong', f));
        break;
      }
      default: break;
    }
  }

  _onReady(f) {
    if (this._connectTimer) clearTimeout(this._connectTimer);
    this._connectTimer = null;
    this._attempt = 0;
    this.deviceId = f.device_id;
    this.tenantId = f.tenant_id;
    this.address = f.address;
    this._heartbeatMs = this._heartbeatOverride || f.heartbeat_ms || 0;
    this._armHeartbeat();
    const serverLast = Number.isSafeInteger(f.last_seq) ? f.last_seq : 0;
    if (serverLast < this._lastSeq) {
      // The inbox is behind what we saw (a restored or different store): follow it;
      // message ids still drop what was already delivered.
      const detail = { lastSeq: this._lastSeq, serverLastSeq: serverLast };
      this._lastSeq = serverLast;
      this._pending.clear();
      this._queueSave();
      this.dispatchEvent(makeEvent('reset', detail));
    }
    this._setState('syncing');
    this.dispatchEvent(makeEvent('ready', f));
    if (!this.connected) return; // a listener closed or reconnected
    for (const e of this._outbox.values()) if (!e.timer) this._transmitSend(e);
    this._flushReceipts();
    if (serverLast > this._lastSeq || this._pending.size) this._startSync();
    else this._setState('live');
  }

  _onAck(f) {
    if (typeof f.message_id === 'string') {
      this._seen.add(`m:${f.message_id}`);
      this._ownHeld.delete(f.message_id);
    }
    // The ack's seq is the sender's own copy: that inbox slot is handled.
    if (Number.isSafeInteger(f.seq)) this._entry({ type: 'ack', seq: f.seq, message_id: f.message_id }, true);
    const e = this._outbox.get(f.id);
    if (e) {
      this._outbox.delete(f.id);
      if (e.timer) clearTimeout(e.timer);
      e.resolve({ id: f.id, message_id: f.message_id, seq: f.seq, ts: f.ts });
    }
    this._releaseOwnHeld();
    this.dispatchEvent(makeEvent('ack', f));
  }

  _onError(f) {
    const retryable = RETRYABLE.has(f.code);
    const wait = Number.isFinite(f.retry_after_ms) ? f.retry_after_ms : null;
    const e = f.id != null ? this._outbox.get(f.id) : undefined;
    if (e) {
      if (retryable) {
        e.retries++;
        const delay = wait ?? this._backoff(e.retries);
        e.timer = setTimeout(() => {
          e.timer = null;
          if (this._outbox.get(e.id) === e && this.connected) this._transmitSend(e);
        }, delay);
      } else {
        this._outbox.delete(e.id);
        e.reject(new SwitchboardError(f.code, f.message, { retryAfterMs: wait, sent: true, frame: f }));
        this._releaseOwnHeld();
      }
    } else if (this._sync && f.id === this._sync.id) {
      const sync = this._sync;
      if (retryable) {
        const delay = wait ?? this._backoff(1);
        setTimeout(() => { if (this._sync === sync) this._sendSyncPage(); }, delay);
      } else {
        this._sync = null;
        if (this._state === 'syncing') this._setState('live');
      }
    } else if (this._receiptsSent && this._receiptsSent.has(f.id)) {
      const r = this._receiptsSent.get(f.id);
      this._receiptsSent.delete(f.id);
      if (retryable) {
        setTimeout(() => {
          this._receipts.unshift(r);
          this._receiptsQueued += r.ids.length;
          if (this.connected) this._flushReceipts();
        }, wait ?? this._backoff(1));
      }
    }
    this.dispatchEvent(makeEvent('error', f));
  }

  _backoff(attempt) {
    const ceiling = Math.min(this._reconnect.capMs, this._reconnect.baseMs * 2 ** Math.max(0, attempt - 1));
    return Math.floor(this._random() * ceiling);
  }

  // ---- sync and ordering ----

  _startSync() {
    if (this._sync) {
      this._sync.again = true;
      return;
    }
    if (this._gapTimer) clearTimeout(this._gapTimer);
    this._gapTimer = null;
    this._sync = { id: null, again: false };
    if (this._state === 'live') this._setState('syncing');
    this._sendSyncPage();
  }

  _sendSyncPage() {
    const sync = this._sync;
    sync.id = `s.${++this._nextId}`;
    this._transmit({ type: 'sync', id: sync.id, after_seq: this._lastSeq, limit: this._syncLimit });
  }

  _onPage(f) {
    const sync = this._sync;
    if (!sync || f.id !== sync.id) return;
    const items = Array.isArray(f.items) ? f.items : [];
    for (const item of items) this._entry(item, false);
    // A page holds every committed entry up to next_after_seq: a missing seq in it
    // will never come, so the watermark may pass it.
    if (Number.isSafeInteger(f.next_after_seq)) this._advanceTo(f.next_after_seq);
    if (f.more === true && items.length) {
      this._sendSyncPage();
      return;
    }
    this._sync = null;
    if (sync.again) {
      this._startSync();
      return;
    }
    if (this._state === 'syncing') this._setState('live');
    this._armGapTimer();
  }

  /** Handles one inbox entry (or an ack's slot) at its seq, in seq order. */
  _entry(item, live) {
    const seq = item.seq;
    if (!Number.isSafeInteger(seq)) return;
    if (seq <= this._lastSeq) return;
    if (seq !== this._lastSeq + 1) {
      if (!this._pending.has(seq)) this._pending.set(seq, { item, live });
      if (this._pending.size > this._maxPending) {
        // Too far ahead: forget them, sync reads them again.
        this._pending.clear();
        if (this.connected) this._startSync();
      } else {
        this._armGapTimer();
      }
      return;
    }
    this._pending.delete(seq); // the same entry may also have come live
    this._consume(item, live);
    this._lastSeq = seq;
    this._drainPending();
    this._queueSave();
  }

  _drainPending() {
    while (this._pending.size) {
      const next = this._pending.get(this._lastSeq + 1);
      if (!next) break;
      this._pending.delete(this._lastSeq + 1);
      this._consume(next.item, next.live);
      this._lastSeq++;
    }
    if (!this._pending.size && this._gapTimer) {
      clearTimeout(this._gapTimer);
      this._gapTimer = null;
    }
  }

  _advanceTo(seq) {
    if (seq <= this._lastSeq) return;
    const ahead = [...this._pending.keys()].filter((s) => s <= seq).sort((a, b) => a - b);
    for (const s of ahead) {
      const p = this._pending.get(s);
      this._pending.delete(s);
      this._consume(p.item, p.live);
    }
    this._lastSeq = seq;
    this._drainPending();
    this._queueSave();
  }

  _armGapTimer() {
    if (this._gapTimer || !this._pending.size || this._sync || !this.connected) return;
    this._gapTimer = setTimeout(() => {
      this._gapTimer = null;
      if (this._pending.size && this.connected) this._startSync();
    }, this._gapSyncMs);
  }

  _consume(item, live) {
    if (item.type === 'message' && typeof item.message_id === 'string') {
      const key = `m:${item.message_id}`;
      if (this._seen.has(key)) return;
      const outgoing = this.address != null && item.from === this.address;
      if (outgoing && this._hasSentUnanswered()) {
        // Possibly the copy of a send whose ack is still coming: wait for it.
        this._ownHeld.set(item.message_id, { item, live });
        while (this._ownHeld.size > this._maxOutbox) this._emitHeld(this._ownHeld.keys().next().value);
        return;
      }
      this._seen.add(key);
      this.dispatchEvent(makeEvent('message', { message: item, outgoing, live }));
      if (!outgoing && this._autoDelivered) this.receipt([item.message_id], 'delivered');
    } else if (item.type === 'status' && typeof item.message_id === 'string') {
      const key = `s:${item.message_id}:${item.status}:${item.by}`;
      if (this._seen.has(key)) return;
      this._seen.add(key);
      this.dispatchEvent(makeEvent('status', { status: item, live }));
    }
  }

  _hasSentUnanswered() {
    for (const e of this._outbox.values()) if (e.sent) return true;
    return false;
  }

  _emitHeld(messageId) {
    const held = this._ownHeld.get(messageId);
    this._ownHeld.delete(messageId);
    const key = `m:${messageId}`;
    if (!held || this._seen.has(key)) return;
    this._seen.add(key);
    this.dispatchEvent(makeEvent('message', { message: held.item, outgoing: true, live: held.live }));
  }

  _releaseOwnHeld() {
    if (!this._ownHeld.size || this._hasSentUnanswered()) return;
    for (const id of [...this._ownHeld.keys()]) this._emitHeld(id);
    this._queueSave();
  }

  // ---- storage ----

  _queueSave() {
    if (this._saveQueued) return;
    this._saveQueued = true;
    queueMicrotask(() => {
      this._saveQueued = false;
      this._saveNow();
    });
  }

  _saveNow() {
    try {
      const r = this._storage.save({ lastSeq: this._lastSeq, seen: this._seen.values() });
      if (r && typeof r.catch === 'function') r.catch(() => {});
    } catch {
      // a failing storage must not break delivery
    }
  }
}

/** `new SwitchboardClient(options).connect()`. */
export function connect(options) {
  return new SwitchboardClient(options).connect();
}

export default SwitchboardClient;
