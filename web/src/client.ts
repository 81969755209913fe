/**
 * `FolioClient`: one WebSocket to a Folio server (`/ws`) shared by every
 * document the application opens. It owns the connection's life: the
 * `Hello`/`Welcome` handshake, an application-level `Ping` to notice dead
 * connections, and reconnection with exponential backoff and jitter. The
 * documents themselves are handled by {@link FolioProvider}s, which the
 * client tells when the connection comes and goes and to which it routes
 * every message naming their document. With access control it sends the
 * access token in `Hello`, and, when the token comes from a function,
 * refreshes it with `Reauth` before it expires.
 *
 * @module
 */

import { create, fromBinary, toBinary } from '@bufbuild/protobuf'
import type { MessageInitShape } from '@bufbuild/protobuf'
import { ObservableV2 } from 'lib0/observable'

import {
  ClientMessageSchema,
  ErrorCode,
  ProtocolVersion,
  ServerMessageSchema
} from './gen/folio/v1/folio_pb.js'
import type { Error as WireError, Limits, ServerMessage } from './gen/folio/v1/folio_pb.js'

/** The part of the WebSocket API the client uses (the browser's, `ws`'s, Node 22's). */
export interface WebSocketLike {
  binaryType: string
  readonly readyState: number
  send: (data: Uint8Array) => void
  close: (code?: number, reason?: string) => void
  onopen: ((ev: unknown) => void) | null
  onmessage: ((ev: { data: unknown }) => void) | null
  onclose: ((ev: { code?: number, reason?: string }) => void) | null
  onerror: ((ev: unknown) => void) | null
}

/** A WebSocket constructor, e.g. `globalThis.WebSocket` or the `ws` package's. */
export type WebSocketConstructor = new (url: string) => WebSocketLike

/**
 * An access token (an HS256 JWT minted by your backend or `folio token`), or
 * a function that gets a fresh one (e.g. from your backend), called at every
 * (re)connect and before the current token expires.
 */
export type TokenSource = string | (() => string | Promise<string>)

/** Settings of a {@link FolioClient}; every field is optional. */
export interface FolioClientOptions {
  /** Recorded by the server as the author of this client's updates (at most 128 bytes); a token's `sub` replaces it. */
  name?: string
  /**
   * The access token sent in `Hello`, for a server with `--auth-secret`. A
   * function is called at every (re)connect, and again shortly before the
   * connection's token expires (30 s before, or halfway through its life if
   * that is sooner) to send the new one in `Reauth`: an open connection
   * then never reaches `TOKEN_EXPIRED`. A function that throws or rejects is
   * retried with the reconnect backoff.
   */
  token?: TokenSource
  /** The WebSocket implementation; defaults to `globalThis.WebSocket` (pass `ws` on Node 20). */
  WebSocket?: WebSocketConstructor
  /** Connect at once (default `true`); otherwise call {@link FolioClient.connect}. */
  connect?: boolean
  /** How often to send `Ping` while connected (default 25 s). */
  pingIntervalMs?: number
  /** A connection that has sent nothing for this long after a `Ping` is dropped (default 10 s). */
  pingTimeoutMs?: number
  /** The first reconnect delay (default 250 ms); it doubles per failed attempt. */
  minBackoffMs?: number
  /** The largest reconnect delay (default 10 s). */
  maxBackoffMs?: number
  /** Listen to the browser's `online`/`offline` events (default `true` where they exist). */
  watchBrowserNetwork?: boolean
}

/**
 * Where the connection is. `refused`: the server refused the (string) token
 * in `Hello`; the client does not retry until {@link FolioClient.reauth} or
 * {@link FolioClient.connect}. `closed` is final (after {@link FolioClient.destroy}).
 */
export type ConnectionState = 'connecting' | 'online' | 'offline' | 'refused' | 'closed'

/** What the server announced in `Welcome`. */
export interface Session {
  connectionId: bigint
  limits: { maxMessageBytes: number, maxDocsPerConnection: number, maxUnackedUpdates: number }
}

/** A refusal from the server, with its symbolic code name. */
export class FolioError extends Error {
  /** The wire code, e.g. `ErrorCode.NOT_SUBSCRIBED`. */
  readonly code: ErrorCode
  /** The document concerned, or `''`. */
  readonly doc: string
  /** The `seq` of the refused update, or `0n`. */
  readonly seq: bigint
  /** For `RATE_LIMITED`: milliseconds before sending again; otherwise `0n`. */
  readonly retryAfterMs: bigint

  constructor (wire: WireError) {
    super(`${ErrorCode[wire.code] ?? wire.code}: ${wire.message}`)
    this.name = 'FolioError'
    this.code = wire.code
    this.doc = wire.doc
    this.seq = wire.seq
    this.retryAfterMs = wire.retryAfterMs
  }
}

/** Events of a {@link FolioClient}. */
export interface FolioClientEvents {
  /** The handshake completed: documents are being (re)subscribed. */
  online: (session: Session) => void
  /** The connection was lost (or could not be made); the client retries by itself. */
  offline: (why: { code?: number, reason: string }) => void
  /** Every change of {@link FolioClient.state}. */
  state: (state: ConnectionState) => void
  /** A refusal that is not about one document, or about one no provider follows. */
  error: (error: FolioError) => void
  /** The server accepted a `Reauth`: the new token is the connection's (`expiresAtMs` 0 on an open server). */
  reauthed: (info: { expiresAtMs: number }) => void
  /** The token function threw or rejected; it is tried again with the reconnect backoff. */
  tokenError: (error: unknown) => void
}

/** A server message about one document, as a provider receives it. */
export type DocMessage = Exclude<ServerMessage['kind'], { case: 'welcome' | 'pong' | undefined }>

/**
 * What the client needs from each document bound to it; {@link FolioProvider}
 * implements it. Applications use providers rather than this directly.
 */
export interface DocBinding {
  readonly docId: string
  /** The connection is up: subscribe. */
  onOnline: () => void
  /** The connection is gone; the server has dropped every subscription. */
  onOffline: () => void
  /** A message naming this document. */
  onMessage: (message: DocMessage) => void
  /** Acks freed room under `max_unacked_updates`: queued updates may go now. */
  onCapacity: () => void
  /** The connection has a new token (`Reauthed`): rights may have changed. */
  onReauthed?: () => void
}

type ClientInit = MessageInitShape<typeof ClientMessageSchema>

const OPEN = 1
const NORMAL_CLOSURE = 1000
const POLICY_VIOLATION = 1008

/** A token function's token is refreshed this long before it expires (or at half its life if sooner). */
const REFRESH_BEFORE_MS = 30_000
/** Never refresh more often than this, whatever the tokens' lifetimes. */
const MIN_REFRESH_MS = 1_000
/** setTimeout's largest delay; longer waits are taken in several steps. */
const MAX_TIMER_MS = 2 ** 31 - 1

/** Codes that refuse a token (in `Hello` or `Reauth`, or at expiry). */
function isTokenRefusal (code: ErrorCode): boolean {
  return code === ErrorCode.UNAUTHORIZED || code === ErrorCode.FORBIDDEN || code === ErrorCode.TOKEN_EXPIRED
}

/**
 * The `exp` claim of a JWT, in ms since the epoch, read without verifying
 * the signature (only the server can, and does); null if `token` is not a
 * JWT with a numeric `exp`.
 */
export function tokenExpiryMs (token: string): number | null {
  const parts = token.split('.')
  if (parts.length !== 3) return null
  try {
    const b64 = parts[1].replace(/-/g, '+').replace(/_/g, '/')
    const claims = JSON.parse(atob(b64 + '='.repeat((4 - b64.length % 4) % 4))) as { exp?: unknown }
    return typeof claims.exp === 'number' && Number.isFinite(claims.exp) ? claims.exp * 1000 : null
  } catch {
    return null
  }
}

/** Used until the server's `Welcome` says otherwise. */
const DEFAULT_LIMITS: Session['limits'] = {
  maxMessageBytes: 4 * 1024 * 1024,
  maxDocsPerConnection: 256,
  maxUnackedUpdates: 4096
}

function limitsOf (wire: Limits | undefined): Session['limits'] {
  return {
    maxMessageBytes: wire?.maxMessageBytes || DEFAULT_LIMITS.maxMessageBytes,
    maxDocsPerConnection: wire?.maxDocsPerConnection || DEFAULT_LIMITS.maxDocsPerConnection,
    maxUnackedUpdates: wire?.maxUnackedUpdates || DEFAULT_LIMITS.maxUnackedUpdates
  }
}

/** The browser's `window`, when there is one with network events. */
function browserWindow (): (EventTarget & { navigator?: { onLine?: boolean } }) | undefined {
  const g = globalThis as { addEventListener?: unknown, navigator?: { onLine?: boolean } }
  return typeof g.addEventListener === 'function' && g.navigator !== undefined
    ? (globalThis as unknown as EventTarget & { navigator?: { onLine?: boolean } })
    : undefined
}

/**
 * One connection to a Folio server for any number of documents.
 *
 * ```ts
 * const client = new FolioClient('wss://folio.example.com/ws', { name: 'alice' })
 * client.on('offline', () => console.log('reconnecting…'))
 * ```
 *
 * The client reconnects until {@link FolioClient.destroy} is called: after a
 * failure it waits a random delay between half and all of
 * `min(maxBackoffMs, minBackoffMs * 2^attempt)`, so that many clients of a
 * restarted server do not all come back at the same instant.
 */
export class FolioClient extends ObservableV2<FolioClientEvents> {
  /** The `/ws` URL. */
  readonly url: string
  /** The name sent in `Hello`. */
  readonly name: string
  #options: Required<Omit<FolioClientOptions, 'name' | 'WebSocket' | 'connect' | 'token'>>
  #WebSocket: WebSocketConstructor
  #ws: WebSocketLike | null = null
  #state: ConnectionState = 'offline'
  #session: Session | null = null
  #bindings = new Map<string, DocBinding>()
  #attempt = 0
  #reconnectTimer: ReturnType<typeof setTimeout> | null = null
  #pingTimer: ReturnType<typeof setInterval> | null = null
  #pongTimer: ReturnType<typeof setTimeout> | null = null
  #nonce = 0n
  #lastHeardMs = 0
  #nextSeq = 1n
  #unacked = 0
  #wanted = false
  #tokenSource: TokenSource | undefined
  /** The token last sent in `Hello` or `Reauth` on this connection. */
  #token = ''
  /** Waiting for the token function before opening a socket. */
  #dialing = false
  /** Bumped when a connection ends: results of token functions called for it are dropped. */
  #generation = 0
  /** The one timer that refreshes a token function's token. */
  #refreshTimer: ReturnType<typeof setTimeout> | null = null
  #refreshing = false
  #refreshAttempt = 0
  /** Why the server refused the token in `Hello` (state `refused`). */
  #refused: FolioError | null = null
  #window = browserWindow()
  #onBrowserOnline = (): void => {
    if (this.#wanted && this.#state === 'offline') {
      this.#attempt = 0
      this.#clearReconnect()
      this.#open()
    }
  }

  #onBrowserOffline = (): void => {
    this.#lost(undefined, 'the browser went offline')
  }

  /**
   * @param url the server's WebSocket endpoint, e.g. `ws://127.0.0.1:4700/ws`.
   * @throws if no WebSocket implementation is available.
   */
  constructor (url: string, options: FolioClientOptions = {}) {
    super()
    this.url = url
    this.name = options.name ?? ''
    const ctor = options.WebSocket ?? (globalThis as { WebSocket?: WebSocketConstructor }).WebSocket
    if (ctor === undefined) {
      throw new TypeError('FolioClient: no WebSocket implementation; pass options.WebSocket (e.g. the `ws` package)')
    }
    this.#WebSocket = ctor
    this.#tokenSource = options.token
    this.#options = {
      pingIntervalMs: options.pingIntervalMs ?? 25_000,
      pingTimeoutMs: options.pingTimeoutMs ?? 10_000,
      minBackoffMs: options.minBackoffMs ?? 250,
      maxBackoffMs: options.maxBackoffMs ?? 10_000,
      watchBrowserNetwork: options.watchBrowserNetwork ?? true
    }
    if (this.#options.watchBrowserNetwork && this.#window !== undefined) {
      this.#window.addEventListener('online', this.#onBrowserOnline)
      this.#window.addEventListener('offline', this.#onBrowserOffline)
    }
    if (options.connect ?? true) this.connect()
  }

  /** Where the connection is now. */
  get state (): ConnectionState {
    return this.#state
  }

  /** Whether the handshake has completed and the socket is open. */
  get online (): boolean {
    return this.#state === 'online'
  }

  /** What the server said in its last `Welcome` (null before the first). */
  get session (): Session | null {
    return this.#session
  }

  /** The limits of the current connection (defaults before `Welcome`). */
  get limits (): Session['limits'] {
    return this.#session?.limits ?? DEFAULT_LIMITS
  }

  /** Why the server refused the token in `Hello`, while the state is `refused`. */
  get refused (): FolioError | null {
    return this.#refused
  }

  /** Starts connecting (and keeps reconnecting) if not already doing so. */
  connect (): void {
    if (this.#state === 'closed') throw new Error('FolioClient: destroyed')
    this.#wanted = true
    if (this.#refused !== null) {
      this.#refused = null
      this.#setState('offline')
    }
    if (this.#ws === null && this.#reconnectTimer === null && !this.#dialing) this.#open()
  }

  /**
   * Gives the connection a new token: sends `Reauth` now if online (the
   * server answers with the `reauthed` event, or an `error` and the
   * connection keeps its rights), and, unless the `token` option is a
   * function, sends it in the `Hello` of later connections too. After a
   * `refused` Hello it reconnects with it. Every provider stopped by
   * `TOKEN_EXPIRED`, `UNAUTHORIZED`, `FORBIDDEN`, `DOC_NOT_FOUND` or
   * `READ_ONLY` tries once more after `Reauthed`.
   *
   * @returns whether `Reauth` was sent now.
   */
  reauth (token: string): boolean {
    if (typeof this.#tokenSource !== 'function') this.#tokenSource = token
    if (this.#state === 'refused') {
      this.connect()
      return false
    }
    return this.#sendReauth(token)
  }

  /** Closes the connection and stops reconnecting until {@link connect}. */
  disconnect (): void {
    this.#wanted = false
    this.#refused = null
    this.#clearReconnect()
    this.#lost(NORMAL_CLOSURE, 'disconnect() called')
  }

  /** Closes for good and forgets every document. */
  override destroy (): void {
    this.disconnect()
    if (this.#window !== undefined) {
      this.#window.removeEventListener('online', this.#onBrowserOnline)
      this.#window.removeEventListener('offline', this.#onBrowserOffline)
    }
    this.#bindings.clear()
    this.#setState('closed')
    super.destroy()
  }

  /**
   * Routes `binding.docId`'s messages to `binding`; subscribes at once if
   * online. Used by {@link FolioProvider}.
   *
   * @throws if another binding already follows the document.
   */
  bind (binding: DocBinding): void {
    if (this.#bindings.has(binding.docId)) {
      throw new Error(`FolioClient: document ${binding.docId} is already bound`)
    }
    this.#bindings.set(binding.docId, binding)
    if (this.online) binding.onOnline()
  }

  /** Stops routing to `binding` and unsubscribes its document. */
  unbind (binding: DocBinding): void {
    if (this.#bindings.get(binding.docId) !== binding) return
    this.#bindings.delete(binding.docId)
    this.send({ case: 'unsubscribe', value: { doc: binding.docId } })
  }

  /**
   * Sends one message if the connection is up; returns whether it was sent.
   * Messages are never queued here: providers resend what matters after a
   * reconnect.
   */
  send (message: ClientInit['kind']): boolean {
    if (this.#state !== 'online' || this.#ws?.readyState !== OPEN) return false
    return this.#write(message)
  }

  /**
   * Sends an `Update` and returns the `seq` the server will echo in its
   * `Ack` or `Error`, or null if offline or if `max_unacked_updates` updates
   * are already in flight on this connection (then keep it and retry on
   * {@link DocBinding.onCapacity}).
   */
  sendUpdate (doc: string, update: Uint8Array): bigint | null {
    if (!this.hasCapacity()) return null
    const seq = this.#nextSeq
    if (!this.send({ case: 'update', value: { doc, update, seq } })) return null
    this.#nextSeq += 1n
    this.#unacked += 1
    return seq
  }

  /** Whether one more update may be sent now. */
  hasCapacity (): boolean {
    return this.online && this.#unacked < this.limits.maxUnackedUpdates
  }

  #write (message: ClientInit['kind']): boolean {
    try {
      this.#ws?.send(toBinary(ClientMessageSchema, create(ClientMessageSchema, { kind: message })))
      return true
    } catch {
      // The socket broke between the check and the send; onclose follows.
      return false
    }
  }

  #setState (state: ConnectionState): void {
    if (this.#state === state) return
    this.#state = state
    this.emit('state', [state])
  }

  #open (): void {
    if (!this.#wanted || this.#ws !== null || this.#dialing) return
    if (this.#window?.navigator?.onLine === false && this.#options.watchBrowserNetwork) {
      // No point dialling while the browser says it has no network: its
      // `online` event brings us back at once.
      this.#setState('offline')
      return
    }
    const source = this.#tokenSource
    if (typeof source !== 'function') {
      this.#dial(source ?? '')
      return
    }
    this.#dialing = true
    this.#setState('connecting')
    const generation = this.#generation
    fetchToken(source).then((token) => {
      if (generation !== this.#generation) return // disconnected meanwhile
      this.#dialing = false
      this.#dial(token)
    }, (e: unknown) => {
      if (generation !== this.#generation) return
      this.#dialing = false
      this.#setState('offline')
      this.emit('tokenError', [e])
      this.emit('offline', [{ reason: `the token function failed: ${String(e)}` }])
      this.#scheduleReconnect()
    })
  }

  /** Opens the socket; `token` goes in `Hello`. */
  #dial (token: string): void {
    let ws: WebSocketLike
    try {
      ws = new this.#WebSocket(this.url)
    } catch (e) {
      this.#setState('offline')
      this.emit('offline', [{ reason: `cannot open ${this.url}: ${String(e)}` }])
      this.#scheduleReconnect()
      return
    }
    this.#ws = ws
    this.#setState('connecting')
    ws.binaryType = 'arraybuffer'
    ws.onopen = () => {
      this.#nextSeq = 1n
      this.#unacked = 0
      this.#token = token
      this.#write({ case: 'hello', value: { protocolVersion: ProtocolVersion.V1, clientName: this.name, token } })
    }
    ws.onmessage = (ev) => this.#receive(ev.data)
    ws.onclose = (ev) => {
      if (this.#ws === ws) this.#lost(ev.code, ev.reason ?? '')
    }
    ws.onerror = () => {
      // onclose always follows; nothing to add here.
    }
  }

  /** Tears the socket down (if any) and plans the next attempt. */
  #lost (code: number | undefined, reason: string): void {
    const ws = this.#ws
    const wasOnline = this.#state === 'online'
    this.#ws = null
    this.#stopPing()
    // A token function still running belongs to this connection: drop its result.
    this.#generation += 1
    this.#dialing = false
    this.#refreshing = false
    this.#clearRefresh()
    if (ws !== null) {
      ws.onopen = ws.onmessage = ws.onclose = ws.onerror = null
      try {
        ws.close(NORMAL_CLOSURE)
      } catch {
        // Already closed.
      }
    }
    if (this.#state === 'closed') return
    this.#setState(this.#refused !== null ? 'refused' : 'offline')
    if (wasOnline) {
      for (const binding of [...this.#bindings.values()]) binding.onOffline()
    }
    if (ws !== null || wasOnline) this.emit('offline', [{ code, reason }])
    if (this.#wanted) this.#scheduleReconnect()
  }

  /** The delay before try number `attempt` + 1: exponential, capped, with "equal jitter". */
  #backoff (attempt: number): number {
    const { minBackoffMs, maxBackoffMs } = this.#options
    const ceiling = Math.min(maxBackoffMs, minBackoffMs * 2 ** Math.min(attempt, 30))
    // Between half and all of the exponential delay.
    return ceiling / 2 + Math.random() * (ceiling / 2)
  }

  #scheduleReconnect (): void {
    if (this.#reconnectTimer !== null || !this.#wanted) return
    const delay = this.#backoff(this.#attempt)
    this.#attempt += 1
    this.#reconnectTimer = setTimeout(() => {
      this.#reconnectTimer = null
      this.#open()
    }, delay)
  }

  #sendReauth (token: string): boolean {
    if (!this.send({ case: 'reauth', value: { token } })) return false
    this.#token = token
    return true
  }

  /**
   * Plans the refresh of a token function's token: 30 s before the
   * connection's token expires, or halfway through what is left of its life
   * if that is sooner, and never within {@link MIN_REFRESH_MS}. Replaces any
   * planned refresh: there is one timer per client.
   */
  #planRefresh (): void {
    this.#clearRefresh()
    if (typeof this.#tokenSource !== 'function' || !this.online) return
    const expiry = tokenExpiryMs(this.#token)
    if (expiry === null) return // not a JWT with `exp`: nothing to refresh
    const left = expiry - Date.now()
    const at = Date.now() + Math.max(MIN_REFRESH_MS, left - Math.min(REFRESH_BEFORE_MS, left / 2))
    const wait = (): void => {
      const delay = at - Date.now()
      this.#refreshTimer = setTimeout(() => {
        this.#refreshTimer = null
        if (Date.now() < at) wait()
        else this.#refresh()
      }, Math.min(Math.max(delay, 0), MAX_TIMER_MS))
    }
    wait()
  }

  /** After a failed refresh (or a refused or expired token): tries again with the reconnect backoff. */
  #retryRefresh (): void {
    if (typeof this.#tokenSource !== 'function' || !this.online || this.#refreshing) return
    this.#clearRefresh()
    const delay = this.#backoff(this.#refreshAttempt)
    this.#refreshAttempt += 1
    this.#refreshTimer = setTimeout(() => {
      this.#refreshTimer = null
      this.#refresh()
    }, delay)
  }

  /** Gets a new token from the function and sends it in `Reauth`. */
  #refresh (): void {
    const source = this.#tokenSource
    if (typeof source !== 'function' || !this.online || this.#refreshing) return
    this.#refreshing = true
    const generation = this.#generation
    fetchToken(source).then((token) => {
      if (generation !== this.#generation) return // that connection is gone; the next Hello has a fresh token
      this.#refreshing = false
      // `Reauthed` plans the next refresh; a refusal retries.
      if (!this.#sendReauth(token)) this.#retryRefresh()
    }, (e: unknown) => {
      if (generation !== this.#generation) return
      this.#refreshing = false
      this.emit('tokenError', [e])
      this.#retryRefresh()
    })
  }

  #clearRefresh (): void {
    if (this.#refreshTimer !== null) clearTimeout(this.#refreshTimer)
    this.#refreshTimer = null
  }

  /** A refusal without a document: of the token in `Hello` or `Reauth`, or the connection's token expired. */
  #connectionError (error: FolioError): void {
    if (this.#state === 'connecting' && isTokenRefusal(error.code) && typeof this.#tokenSource !== 'function') {
      // `Hello` refused, and the same token would be refused again: stop
      // until the application gives another (reauth) or asks (connect).
      this.#refused = error
      this.#wanted = false
      this.#clearReconnect()
      this.emit('error', [error])
      this.#lost(POLICY_VIOLATION, error.message)
      return
    }
    this.emit('error', [error])
    // A token function gives another; a refused Hello reconnects instead.
    if (this.#state === 'online' && isTokenRefusal(error.code)) this.#retryRefresh()
  }

  #clearReconnect (): void {
    if (this.#reconnectTimer !== null) clearTimeout(this.#reconnectTimer)
    this.#reconnectTimer = null
  }

  #startPing (): void {
    this.#stopPing()
    this.#pingTimer = setInterval(() => {
      if (this.#pongTimer !== null) return
      const sentAt = Date.now()
      this.#nonce += 1n
      this.send({ case: 'ping', value: { nonce: this.#nonce } })
      this.#pongTimer = setTimeout(() => {
        this.#pongTimer = null
        // Anything heard since the ping proves the connection alive (a
        // server under backpressure answers late, but still sends).
        if (this.#lastHeardMs < sentAt) this.#lost(undefined, 'no answer to ping')
      }, this.#options.pingTimeoutMs)
    }, this.#options.pingIntervalMs)
  }

  #stopPing (): void {
    if (this.#pingTimer !== null) clearInterval(this.#pingTimer)
    if (this.#pongTimer !== null) clearTimeout(this.#pongTimer)
    this.#pingTimer = this.#pongTimer = null
  }

  #receive (data: unknown): void {
    this.#lastHeardMs = Date.now()
    let message: ServerMessage
    try {
      const bytes = data instanceof ArrayBuffer ? new Uint8Array(data) : data as Uint8Array
      message = fromBinary(ServerMessageSchema, bytes)
    } catch (e) {
      this.#lost(undefined, `undecodable message from the server: ${String(e)}`)
      return
    }
    const kind = message.kind
    switch (kind.case) {
      case 'welcome':
        this.#session = { connectionId: kind.value.connectionId, limits: limitsOf(kind.value.limits) }
        this.#attempt = 0
        this.#refreshAttempt = 0
        this.#setState('online')
        this.#startPing()
        this.#planRefresh()
        this.emit('online', [this.#session])
        for (const binding of [...this.#bindings.values()]) {
          if (this.online) binding.onOnline()
        }
        return
      case 'pong':
      case undefined:
        return
      case 'reauthed':
        this.#refreshAttempt = 0
        this.#planRefresh()
        this.emit('reauthed', [{ expiresAtMs: Number(kind.value.expiresAtMs) }])
        for (const binding of [...this.#bindings.values()]) binding.onReauthed?.()
        return
      case 'ack':
        this.#unacked = Math.max(0, this.#unacked - 1)
        this.#route(kind.value.doc, kind)
        if (this.#unacked < this.limits.maxUnackedUpdates) {
          for (const binding of [...this.#bindings.values()]) binding.onCapacity()
        }
        return
      case 'error': {
        const error = kind.value
        if (error.seq !== 0n) this.#unacked = Math.max(0, this.#unacked - 1)
        if (error.doc === '') {
          this.#connectionError(new FolioError(error))
          return
        }
        if (!this.#bindings.has(error.doc)) {
          this.emit('error', [new FolioError(error)])
          return
        }
        this.#route(error.doc, kind)
        return
      }
      default:
        this.#route(kind.value.doc, kind)
    }
  }

  #route (doc: string, message: DocMessage): void {
    this.#bindings.get(doc)?.onMessage(message)
  }
}

/** Calls a token function; anything but a string is a failure. */
async function fetchToken (source: () => string | Promise<string>): Promise<string> {
  const token = await source()
  if (typeof token !== 'string') throw new TypeError(`the token function returned ${typeof token}, not a string`)
  return token
}
