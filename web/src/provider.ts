/**
 * `FolioProvider`: binds one `Y.Doc` and its y-protocols `Awareness` to one
 * document of a {@link FolioClient}, in the shape of y-websocket's
 * `WebsocketProvider` (`doc`, `awareness`, `synced`, `sync` events,
 * `connect`/`disconnect`/`destroy`), so editor bindings such as
 * y-codemirror.next, y-prosemirror or Tiptap work unchanged.
 *
 * Every local update is kept until the server acknowledges it as durable:
 * updates made while offline, or sent on a connection that died before its
 * `Ack`, are merged and resent after the next `Synced`. The `status` event
 * (`saving` | `saved` | `offline` | `read-only`) is driven by those acks
 * only, so "saved" means "on the server's disk".
 *
 * With access control, the `access` event says what the server lets the
 * provider do: a `read` token's edits stay local (`read-only`), a refused
 * subscription stops the provider (`unauthorized`, `forbidden`,
 * `not-found`) rather than retry in a loop, and a subscription ended by an
 * expired token (`expired`) resumes after the client's next `Reauthed`.
 *
 * @module
 */

import { ObservableV2 } from 'lib0/observable'
import * as Y from 'yjs'
import {
  Awareness,
  applyAwarenessUpdate,
  encodeAwarenessUpdate,
  removeAwarenessStates
} from 'y-protocols/awareness'

import { FolioError } from './client.js'
import type { DocBinding, DocMessage, FolioClient } from './client.js'
import { ErrorCode } from './gen/folio/v1/folio_pb.js'

/**
 * What the "Saved" indicator shows. `read-only`: the server refused an edit
 * because the token may only read; local edits are kept, not sent.
 */
export type SaveStatus = 'saving' | 'saved' | 'offline' | 'read-only'

/**
 * What the server lets this provider do with its document:
 * - `ok`: nothing refused (the default; `read` tokens are only known once an edit is refused);
 * - `read-only`: an update got `READ_ONLY`; edits stay pending until a `Reauth` or reconnect;
 * - `expired`: `TOKEN_EXPIRED` ended the subscription; it resubscribes after the next `Reauthed`;
 * - `unauthorized`, `forbidden`, `not-found`: the subscription was refused
 *   (`UNAUTHORIZED`, `FORBIDDEN`, `DOC_NOT_FOUND`); the provider stops, and tries once
 *   more after a `Reauthed` or {@link FolioProvider.connect}.
 */
export type Access = 'ok' | 'read-only' | 'expired' | 'unauthorized' | 'forbidden' | 'not-found'

/** Events of a {@link FolioProvider}. */
export interface FolioProviderEvents {
  /**
   * `saving`: some local change is not yet acknowledged; `saved`: all are
   * durable; `offline`: no connection (or the provider stopped: see `access`);
   * `read-only`: the token may not edit.
   */
  status: (event: { status: SaveStatus }) => void
  /** Every change of {@link FolioProvider.access}, with the refusal that caused it (null back to `ok`). */
  access: (event: { access: Access, error: FolioError | null }) => void
  /** The document finished (`true`) or lost (`false`) its sync with the server, as in y-websocket. */
  sync: (synced: boolean) => void
  /** Alias of `sync`, as y-websocket emits both. */
  synced: (synced: boolean) => void
  /** The server refused something about this document (see `FolioError.code`). */
  error: (error: FolioError) => void
}

/** Settings of a {@link FolioProvider}. */
export interface FolioProviderOptions {
  /** The presence to sync; by default a new `Awareness` of the doc (destroyed with the provider). */
  awareness?: Awareness
  /** Subscribe at once (default `true`); otherwise call {@link FolioProvider.connect}. */
  connect?: boolean
  /** Delay before retrying after a `STORAGE_FAILURE` or `SHUTTING_DOWN` refusal (default 1 s). */
  retryDelayMs?: number
}

/** Past this many, queued updates are merged into one to bound their overhead. */
const MERGE_QUEUED_AFTER = 64

/** Access states in which the provider does not subscribe. */
const STOPPING: ReadonlySet<Access> = new Set(['unauthorized', 'forbidden', 'not-found'])

/** Origin of the remote presence removals this provider makes when offline. */
const OFFLINE_ORIGIN = 'folio-offline'

/**
 * One document of a {@link FolioClient}, bound to a `Y.Doc` and an `Awareness`.
 *
 * ```ts
 * const ydoc = new Y.Doc()
 * const provider = new FolioProvider(client, 'notes', ydoc)
 * provider.on('status', ({ status }) => { savedBadge.textContent = status })
 * ```
 */
export class FolioProvider extends ObservableV2<FolioProviderEvents> implements DocBinding {
  /** The document id on the server. */
  readonly docId: string
  readonly client: FolioClient
  readonly doc: Y.Doc
  readonly awareness: Awareness
  #ownsAwareness: boolean
  #retryDelayMs: number
  #bound = false
  /** `none`: not following; `pending`: Subscribe sent; `live`: Synced received. */
  #subscription: 'none' | 'pending' | 'live' = 'none'
  #synced = false
  /** Sent on this connection, not yet acknowledged: seq → update. */
  #inflight = new Map<bigint, Uint8Array>()
  /** Not sent, or sent and then lost (dead connection, refusal to retry): resent after Synced. */
  #pending: Uint8Array[] = []
  #status: SaveStatus = 'offline'
  #retryTimer: ReturnType<typeof setTimeout> | null = null
  #muteAwareness = false
  /** The document was deleted on the server: do not bring it back by resubscribing. */
  #deleted = false
  #access: Access = 'ok'

  #onDocUpdate = (update: Uint8Array, origin: unknown): void => {
    if (origin === this) return
    this.#pending.push(update)
    if (this.#pending.length > MERGE_QUEUED_AFTER) this.#pending = [Y.mergeUpdates(this.#pending)]
    this.#flush()
    this.#updateStatus()
  }

  #onAwarenessUpdate = (
    { added, updated, removed }: { added: number[], updated: number[], removed: number[] },
    origin: unknown
  ): void => {
    if (origin === this || origin === OFFLINE_ORIGIN || this.#muteAwareness) return
    const self = this.doc.clientID
    if (!added.includes(self) && !updated.includes(self) && !removed.includes(self)) return
    if (this.#subscription !== 'live') return // announced after the next Synced
    this.client.send({
      case: 'awareness',
      value: { doc: this.docId, update: encodeAwarenessUpdate(this.awareness, [self]) }
    })
  }

  /**
   * @param client the connection to use (one per server is enough).
   * @param docId the document id (1 to 128 characters of `A-Za-z0-9._-/`).
   * @param doc the local Yjs document; its root `Y.Text` `"content"` is what the server reads as text.
   */
  constructor (client: FolioClient, docId: string, doc: Y.Doc, options: FolioProviderOptions = {}) {
    super()
    this.client = client
    this.docId = docId
    this.doc = doc
    this.awareness = options.awareness ?? new Awareness(doc)
    this.#ownsAwareness = options.awareness === undefined
    this.#retryDelayMs = options.retryDelayMs ?? 1000
    doc.on('update', this.#onDocUpdate)
    this.awareness.on('update', this.#onAwarenessUpdate)
    if (options.connect ?? true) this.connect()
  }

  /** Whether the document is in sync with the server (after `Synced`). */
  get synced (): boolean {
    return this.#synced
  }

  /** Whether this document is followed on a live connection. */
  get connected (): boolean {
    return this.#subscription === 'live'
  }

  /** Whether the server said the document was deleted (`DOC_DELETED`); nothing is sent since. */
  get deleted (): boolean {
    return this.#deleted
  }

  /** What the server lets this provider do (see {@link Access}). */
  get access (): Access {
    return this.#access
  }

  /** Whether the provider stopped following the document: deleted, or its subscription refused. */
  get stopped (): boolean {
    return this.#deleted || STOPPING.has(this.#access)
  }

  /** The current save status. */
  get status (): SaveStatus {
    return this.#status
  }

  /** How many local updates are not yet acknowledged (sent or not). */
  get unsavedUpdates (): number {
    return this.#inflight.size + this.#pending.length
  }

  /**
   * Starts following the document (subscribing whenever the client is
   * online). After a stop (deleted, or refused), disconnect() then connect()
   * tries again.
   */
  connect (): void {
    if (this.#bound) return
    this.#bound = true
    this.#deleted = false
    this.#setAccess('ok', null)
    this.client.bind(this)
    this.#updateStatus()
  }

  /**
   * Stops following the document. Unacknowledged updates are kept and resent
   * after {@link connect}.
   */
  disconnect (): void {
    if (!this.#bound) return
    this.client.unbind(this)
    this.#bound = false
    this.onOffline()
  }

  /** Disconnects and releases every listener (and the awareness it created). */
  override destroy (): void {
    this.disconnect()
    this.#clearRetry()
    this.doc.off('update', this.#onDocUpdate)
    this.awareness.off('update', this.#onAwarenessUpdate)
    if (this.#ownsAwareness) this.awareness.destroy()
    super.destroy()
  }

  /** @internal Called by the client once the connection is up. */
  onOnline (): void {
    // A new connection may carry another token: read-only and expired are
    // found out again. A refused subscription stays stopped.
    if (this.#access === 'read-only' || this.#access === 'expired') this.#setAccess('ok', null)
    this.#subscribe()
  }

  /**
   * @internal Called by the client when the server accepted a new token:
   * what it refused may be allowed now, so try once more (one attempt per
   * `Reauthed`, so never a loop).
   */
  onReauthed (): void {
    if (!this.#bound || this.#access === 'ok') return
    const was = this.#access
    this.#setAccess('ok', null)
    if (was === 'read-only') this.#flush()
    else this.#subscribe()
    this.#updateStatus()
  }

  /** @internal Called by the client when the connection is gone. */
  onOffline (): void {
    this.#clearRetry()
    this.#subscription = 'none'
    this.#requeueInflight()
    this.#setSynced(false)
    // Remote presences are stale without a connection; the server sends
    // the current ones again in the next Synced.
    const others = [...this.awareness.getStates().keys()].filter((id) => id !== this.doc.clientID)
    removeAwarenessStates(this.awareness, others, OFFLINE_ORIGIN)
    this.#updateStatus()
  }

  /** @internal Called by the client when acks free room for more updates. */
  onCapacity (): void {
    if (this.#pending.length > 0) this.#flush()
  }

  /** @internal A message about this document. */
  onMessage (message: DocMessage): void {
    switch (message.case) {
      case 'synced': {
        const synced = message.value
        if (this.#subscription !== 'pending') return
        Y.applyUpdate(this.doc, synced.update, this)
        if (synced.awareness.length > 0) applyAwarenessUpdate(this.awareness, synced.awareness, this)
        this.#subscription = 'live'
        // Everything the server lacks, including changes it applied on a
        // connection that died before they were durable.
        const diff = Y.encodeStateAsUpdate(this.doc, synced.stateVector)
        if (diff.length > 2) this.#pending.push(diff)
        this.#flush()
        this.#announcePresence()
        this.#setSynced(true)
        this.#updateStatus()
        return
      }
      case 'update':
        if (this.#subscription === 'live') Y.applyUpdate(this.doc, message.value.update, this)
        return
      case 'resynced':
        // This connection fell behind the document: the server dropped the
        // updates it could not queue and sends what they held in one.
        if (this.#subscription === 'live') {
          Y.applyUpdate(this.doc, message.value.update, this)
          if (message.value.awareness.length > 0) applyAwarenessUpdate(this.awareness, message.value.awareness, this)
        }
        return
      case 'awareness':
        if (this.#subscription === 'live') applyAwarenessUpdate(this.awareness, message.value.update, this)
        return
      case 'ack':
        this.#inflight.delete(message.value.seq)
        this.#updateStatus()
        return
      case 'error':
        this.#refused(new FolioError(message.value))
        return
      case 'unsubscribed':
        return
    }
  }

  /** Sends Subscribe with the local state vector. */
  #subscribe (): void {
    if (!this.#bound || !this.client.online || this.stopped || this.#access === 'expired') return
    this.#requeueInflight()
    this.#subscription = 'pending'
    this.client.send({
      case: 'subscribe',
      value: { doc: this.docId, stateVector: Y.encodeStateVector(this.doc) }
    })
    this.#updateStatus()
  }

  /** Sends the pending updates (merged into one) if subscribed and allowed. */
  #flush (): void {
    if (this.#subscription !== 'live' || this.#pending.length === 0 || this.#access === 'read-only') return
    const update = this.#pending.length === 1 ? this.#pending[0] : Y.mergeUpdates(this.#pending)
    const seq = this.client.sendUpdate(this.docId, update)
    if (seq === null) return // offline or at max_unacked_updates: onCapacity/onOnline retry
    this.#pending = []
    this.#inflight.set(seq, update)
  }

  /** Updates whose acks will never come on this connection go back to pending. */
  #requeueInflight (): void {
    if (this.#inflight.size === 0) return
    this.#pending.unshift(...this.#inflight.values())
    this.#inflight.clear()
  }

  /** Re-announces our presence with a clock 2 above the last one sent (docs/protocol.md). */
  #announcePresence (): void {
    const state = this.awareness.getLocalState()
    if (state === null) return
    this.#muteAwareness = true
    this.awareness.setLocalState(state)
    this.#muteAwareness = false
    this.awareness.setLocalState(state)
  }

  #refused (error: FolioError): void {
    const update = error.seq !== 0n ? this.#inflight.get(error.seq) : undefined
    if (update !== undefined) this.#inflight.delete(error.seq)
    switch (error.code) {
      case ErrorCode.NOT_SUBSCRIBED:
      case ErrorCode.SLOW_CONSUMER:
      case ErrorCode.DOC_RELOADED:
        // The server no longer follows us for this document: the update
        // was not applied; keep it and resubscribe (once).
        if (update !== undefined) this.#pending.unshift(update)
        if (this.#subscription === 'live' || error.seq === 0n) {
          this.#setSynced(false)
          this.#subscribe()
        }
        break
      case ErrorCode.DOC_DELETED:
        // Resubscribing would recreate the document from our copy: stop
        // here, and let the application decide (disconnect() + connect()
        // starts following the id again).
        if (update !== undefined) this.#pending.unshift(update)
        this.#deleted = true
        this.#subscription = 'none'
        this.#requeueInflight()
        this.#setSynced(false)
        break
      case ErrorCode.READ_ONLY:
        // Not applied, and resending would be refused the same way: keep it
        // (and every later edit) pending, unsent, until a Reauth or a new
        // connection may bring the write role.
        if (update !== undefined) this.#pending.unshift(update)
        this.#setAccess('read-only', error)
        break
      case ErrorCode.TOKEN_EXPIRED:
        // The subscription ended (or this came after it ended). Once the
        // client has a fresh token (Reauthed, or a reconnect), resubscribe
        // with the state vector: the diff after Synced resends what is pending.
        if (update !== undefined) this.#pending.unshift(update)
        this.#subscription = 'none'
        this.#setSynced(false)
        this.#setAccess('expired', error)
        break
      case ErrorCode.UNAUTHORIZED:
      case ErrorCode.FORBIDDEN:
      case ErrorCode.DOC_NOT_FOUND:
        // The same token would be refused the same way: stop, like
        // DOC_DELETED, rather than resubscribe in a loop. A Reauthed (or
        // disconnect() + connect()) tries once more.
        if (update !== undefined) this.#pending.unshift(update)
        this.#subscription = 'none'
        this.#requeueInflight()
        this.#setSynced(false)
        this.#setAccess(
          error.code === ErrorCode.UNAUTHORIZED ? 'unauthorized' : error.code === ErrorCode.FORBIDDEN ? 'forbidden' : 'not-found',
          error
        )
        break
      case ErrorCode.INVALID_UPDATE:
        // Never resend the same bytes: resync, and the diff after Synced
        // carries whatever the server really lacks.
        if (this.#subscription === 'live') {
          this.#setSynced(false)
          this.client.send({ case: 'unsubscribe', value: { doc: this.docId } })
          this.#subscribe()
        }
        break
      case ErrorCode.RATE_LIMITED:
        // Dropped, not applied: send it again (merged with whatever came
        // after it) once the server's bucket has refilled.
        if (update !== undefined) {
          this.#pending.unshift(update)
          this.#retryLater(() => this.#flush(), Number(error.retryAfterMs))
        }
        break
      case ErrorCode.STORAGE_FAILURE:
      case ErrorCode.SHUTTING_DOWN:
      case ErrorCode.SERVER_BUSY:
      case ErrorCode.INTERNAL:
        if (update !== undefined) {
          // Applied or not, resending is safe (updates are idempotent).
          this.#pending.unshift(update)
          this.#retryLater(() => this.#flush())
        } else if (this.#subscription === 'pending') {
          this.#subscription = 'none'
          this.#retryLater(() => this.#subscribe())
        }
        break
      default:
        if (update !== undefined) this.#pending.unshift(update)
    }
    this.#updateStatus()
    this.emit('error', [error])
  }

  #retryLater (action: () => void, delayMs = this.#retryDelayMs): void {
    if (this.#retryTimer !== null) return
    this.#retryTimer = setTimeout(() => {
      this.#retryTimer = null
      action()
    }, Math.max(delayMs, 1))
  }

  #clearRetry (): void {
    if (this.#retryTimer !== null) clearTimeout(this.#retryTimer)
    this.#retryTimer = null
  }

  #setSynced (synced: boolean): void {
    if (this.#synced === synced) return
    this.#synced = synced
    this.emit('sync', [synced])
    this.emit('synced', [synced])
  }

  #setAccess (access: Access, error: FolioError | null): void {
    if (this.#access === access) return
    this.#access = access
    this.emit('access', [{ access, error }])
  }

  #updateStatus (): void {
    let status: SaveStatus
    if (!this.#bound || !this.client.online || this.stopped || this.#access === 'expired') status = 'offline'
    else if (this.#access === 'read-only') status = 'read-only'
    else if (this.#synced && this.unsavedUpdates === 0) status = 'saved'
    else status = 'saving'
    if (status === this.#status) return
    this.#status = status
    this.emit('status', [{ status }])
  }
}
