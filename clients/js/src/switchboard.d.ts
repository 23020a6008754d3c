// Type declarations for switchboard.js (kept by hand; they match it exactly).

/** Close codes of the server (protocol/README.md). */
export declare const CloseCode: Readonly<{
  NORMAL: 1000;
  GOING_AWAY: 1001;
  PROTOCOL_ERROR: 1002;
  ABNORMAL: 1006;
  INVALID_TEXT: 1007;
  POLICY: 1008;
  TOO_LARGE: 1009;
  RESTARTING: 1012;
  HEARTBEAT_TIMEOUT: 4000;
  KICKED: 4001;
  TOKEN_EXPIRED: 4401;
  TOO_SLOW: 4408;
  DEVICE_DELETED: 4410;
}>;

/** Close codes after which the client does not reconnect (4401 is retried when `token` is a function). */
export declare const FATAL_CLOSE_CODES: readonly number[];

/** Server error codes, plus the client's own (`outbox_full`, `closed`, `disconnected`). */
export type ErrorCode =
  | 'bad_request'
  | 'unauthorized'
  | 'forbidden'
  | 'not_found'
  | 'conflict'
  | 'too_large'
  | 'unsupported_media_type'
  | 'rate_limited'
  | 'unavailable'
  | 'internal'
  | 'outbox_full'
  | 'closed'
  | 'disconnected'
  | (string & {});

/** An error a promise of the client is rejected with. */
export declare class SwitchboardError extends Error {
  constructor(code: ErrorCode, message?: string, details?: { retryAfterMs?: number | null; sent?: boolean; frame?: ErrorFrame });
  readonly name: 'SwitchboardError';
  /** The server's error code, or `outbox_full` / `closed` / `disconnected` / `too_large` / `bad_request` from the client. */
  readonly code: ErrorCode;
  /** For `rate_limited`: when to retry. */
  readonly retryAfterMs: number | null | undefined;
  /** Whether the request went out on a socket (a `closed` send that was sent may have happened). */
  readonly sent: boolean;
  /** The server's `error` frame, when there was one. */
  readonly frame: ErrorFrame | undefined;
}

/** What the client keeps across a page's life (or longer, with a lasting storage). */
export interface StoredState {
  /** Highest seq up to which every inbox entry was handled. */
  lastSeq: number;
  /** Dedupe keys of recently delivered entries (`m:<message_id>`, `s:<message_id>:<status>:<by>`). */
  seen: string[];
}

/** Where the client keeps its resume point; `load` may be async (it runs before the first connect). */
export interface Storage {
  load(): StoredState | null | undefined | Promise<StoredState | null | undefined>;
  save(state: StoredState): void | Promise<void>;
}

/** A storage in memory (the default). */
export declare function memoryStorage(): Storage;

/** A storage over `sessionStorage` / `localStorage` under `key` (use one key per device). */
export declare function webStorage(
  storage: { getItem(key: string): string | null; setItem(key: string, value: string): void },
  key: string,
): Storage;

export type Priority = 'critical' | 'high' | 'normal' | 'low';
export type ReceiptStatus = 'delivered' | 'read';
export type TypingState = 'composing' | 'paused';
export type ConnectionState = 'idle' | 'connecting' | 'syncing' | 'live' | 'reconnecting' | 'closed';
/** An E.164 address, or a group. */
export type Target = string | { group: string };

export interface ClientOptions {
  /** The server (`http://host:port`, `ws://host:port`) or the full `ws://host/v1/ws` URL. */
  url: string;
  /** A device token, or a function giving one (asked on every connect; then 4401 is retried). */
  token: string | (() => string | Promise<string>);
  /** Where `lastSeq` and the seen ids live (default: memory). */
  storage?: Storage;
  /** Reconnect backoff: delay = random(0, min(capMs, baseMs · 2^(attempt-1))). Defaults 500, 30000, Infinity. */
  reconnect?: { baseMs?: number; capMs?: number; maxAttempts?: number };
  /** `sync` page size, 1–1000 (default 200). */
  syncLimit?: number;
  /** Sends kept unanswered at most (default 512, under the server's 1,024-id idempotency window). */
  maxOutbox?: number;
  /** Dedupe keys remembered (default 5000). */
  maxSeen?: number;
  /** Live entries held past a seq gap (default 2000; over it they are dropped and re-read by `sync`). */
  maxPending?: number;
  /** Receipt ids queued while disconnected (default 10000; the oldest go first). */
  maxReceiptIds?: number;
  /** Largest send frame (default 80 KiB, the server's `max_frame_bytes`). */
  maxFrameBytes?: number;
  /** How long a seq gap may stay before a `sync` fills it (default 1000 ms). */
  gapSyncMs?: number;
  /** How long a connect may take up to `ready` (default 15000 ms). */
  connectTimeoutMs?: number;
  /** Liveness period (default: the server's `heartbeat_ms`); silent for two periods = dead. */
  heartbeatMs?: number;
  /** Send a `delivered` receipt for every incoming message delivered (default false). */
  autoDelivered?: boolean;
  /** A WebSocket constructor (default: the global one). */
  WebSocket?: { new (url: string): WebSocket };
  /** Random source for the backoff jitter (default Math.random). */
  random?: () => number;
  /** Prefix of generated request ids (default: random per client). */
  idPrefix?: string;
}

export interface SendOptions {
  /** Rate tier (default normal). */
  priority?: Priority;
  /** Request id to use (≤ 64 chars, unique per device); generated when absent. */
  id?: string;
}

/** A message, as pushed live and as listed by `sync`. */
export interface Message {
  type: 'message';
  message_id: string;
  seq: number;
  ts: number;
  from: string;
  to?: string;
  group?: string;
  body: Record<string, unknown>;
}

/** A receipt for a message this device sent. */
export interface Status {
  type: 'status';
  message_id: string;
  status: ReceiptStatus;
  by: string;
  ts: number;
  seq: number;
}

export interface ReadyFrame {
  type: 'ready';
  device_id: string;
  tenant_id: string;
  address: string;
  last_seq: number;
  heartbeat_ms: number;
}

export interface AckFrame {
  type: 'ack';
  id?: string;
  message_id: string;
  seq: number;
  ts: number;
}

export interface ErrorFrame {
  type: 'error';
  id?: string;
  code: ErrorCode;
  message: string;
  retry_after_ms?: number;
}

export interface MessagesFrame {
  type: 'messages';
  id?: string;
  items: Array<Message | Status>;
  next_after_seq: number;
  more: boolean;
}

export interface TypingFrame {
  type: 'typing';
  from: string;
  group?: string;
  state: TypingState;
}

export interface PongFrame {
  type: 'pong';
  id?: string;
}

export type ServerFrame = ReadyFrame | AckFrame | ErrorFrame | Message | Status | MessagesFrame | TypingFrame | PongFrame;

/** What `send` resolves with. */
export interface Ack {
  id: string;
  message_id: string;
  seq: number;
  ts: number;
}

/** The detail of each event. */
export interface SwitchboardEventMap {
  /** Connection state changed. */
  state: { state: ConnectionState; previous: ConnectionState };
  /** The `ready` frame (a connection is up). */
  ready: ReadyFrame;
  /** The socket is gone; `willRetry` false means the client is closing for good. */
  disconnect: { code: number; reason: string; wasClean: boolean; willRetry: boolean; delayMs: number; attempt: number };
  /** Closed for good (by `close()` or a do-not-retry close code). */
  closed: { code: number; reason: string };
  /** Every frame received, before it is handled. */
  frame: { frame: ServerFrame };
  ack: AckFrame;
  error: ErrorFrame;
  messages: MessagesFrame;
  typing: TypingFrame;
  pong: PongFrame;
  /** An inbox message, once, in seq order; `outgoing` when this device sent it (from another connection). */
  message: { message: Message; outgoing: boolean; live: boolean };
  /** A receipt for a message this device sent, once, in seq order. */
  status: { status: Status; live: boolean };
  /** The server's inbox is behind `lastSeq` (a restored store): the client follows it. */
  reset: { lastSeq: number; serverLastSeq: number };
}

export type SwitchboardEventType = keyof SwitchboardEventMap;

export declare class SwitchboardClient extends EventTarget {
  constructor(options: ClientOptions);

  /** Connection state. */
  readonly state: ConnectionState;
  /** Highest seq up to which every inbox entry has been handled. */
  readonly lastSeq: number;
  /** Whether a socket is up, past `ready`. */
  readonly connected: boolean;
  /** Sends not yet answered. */
  readonly outboxSize: number;
  /** From the last `ready` (null before). */
  deviceId: string | null;
  tenantId: string | null;
  address: string | null;

  /** Listens for `type`; the listener gets the detail. Returns a function that removes it. */
  on<K extends SwitchboardEventType>(type: K, listener: (detail: SwitchboardEventMap[K]) => void): () => void;
  /** Removes a listener added with `on`. */
  off<K extends SwitchboardEventType>(type: K, listener: (detail: SwitchboardEventMap[K]) => void): void;

  addEventListener<K extends SwitchboardEventType>(
    type: K,
    listener: (event: CustomEvent<SwitchboardEventMap[K]>) => void,
    options?: boolean | AddEventListenerOptions,
  ): void;
  addEventListener(type: string, listener: EventListenerOrEventListenerObject | null, options?: boolean | AddEventListenerOptions): void;
  removeEventListener<K extends SwitchboardEventType>(
    type: K,
    listener: (event: CustomEvent<SwitchboardEventMap[K]>) => void,
    options?: boolean | EventListenerOptions,
  ): void;
  removeEventListener(type: string, listener: EventListenerOrEventListenerObject | null, options?: boolean | EventListenerOptions): void;

  /** Starts connecting (loads the storage first). */
  connect(): this;
  /** Drops the socket and connects again at once. */
  reconnect(): void;
  /** Closes for good; unanswered sends reject with `closed`. */
  close(reason?: string): void;
  /** A `sync` from `lastSeq` now. */
  resync(): void;

  /** Sends `body`; resolves with the ack once durable. Resent under the same id after reconnects. */
  send(to: Target, body: Record<string, unknown>, options?: SendOptions): Promise<Ack>;
  /** Reports receipts; queued while disconnected. */
  receipt(messageIds: string | string[], status: ReceiptStatus): void;
  markDelivered(messageIds: string | string[]): void;
  markRead(messageIds: string | string[]): void;
  /** A typing indicator; false when not connected (not queued). */
  typing(to: Target, state?: TypingState): boolean;
  /** An application ping: the round trip in ms. */
  ping(): Promise<number>;
}

/** `new SwitchboardClient(options).connect()`. */
export declare function connect(options: ClientOptions): SwitchboardClient;

export default SwitchboardClient;
