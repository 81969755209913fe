// Helpers for the Node tests: run the real `folio` binary, connect the real
// `y-websocket` provider to it, and speak Folio's own protobuf protocol on
// /ws for the mixed-protocol tests. Every wait is bounded.

import path from 'node:path'

import protobuf from 'protobufjs'
import WebSocket from 'ws'
import * as Y from 'yjs'
import { WebsocketProvider } from 'y-websocket'
import * as awarenessProtocol from 'y-protocols/awareness'

import { repoRoot, PATIENCE_MS, waitFor } from '../../node-support/folio.mjs'

export {
  folioBin, PATIENCE_MS, runCleanup, serverText, sleep, startServer, tempDir, waitFor, within
} from '../../node-support/folio.mjs'

/** The root Y.Text every Folio client edits. */
export const TEXT = 'content'

/**
 * Waits until everything the server applied so far is durable: y-protocols
 * have no acks, but the server's writer commits in order, so once an empty
 * update posted over HTTP is acknowledged, so is everything before it.
 */
export async function durableBarrier (server, doc) {
  const resp = await fetch(`${server.http}/docs/${encodeURIComponent(doc)}/update`, {
    method: 'POST',
    body: new Uint8Array([0, 0])
  })
  if (!resp.ok) throw new Error(`barrier failed: ${resp.status} ${await resp.text()}`)
}

/**
 * A real y-websocket provider on a fresh Y.Doc. BroadcastChannel is off:
 * two providers in one Node process would otherwise sync through it and
 * never need the server.
 */
export function yjsClient (server, doc, cleanup, options = {}) {
  const ydoc = new Y.Doc()
  const provider = new WebsocketProvider(server.yjsUrl, doc, ydoc, {
    WebSocketPolyfill: WebSocket,
    disableBc: true,
    ...options
  })
  cleanup.push(() => {
    provider.destroy()
    ydoc.destroy()
  })
  return { ydoc, provider, text: ydoc.getText(TEXT), awareness: provider.awareness }
}

/** Resolves once `provider` has synced (bounded). */
export function synced (provider) {
  return waitFor('the provider to sync', () => provider.synced)
}

let protoRoot
async function proto () {
  protoRoot ??= await protobuf.load(path.join(repoRoot, 'proto/folio/v1/folio.proto'))
  return {
    ClientMessage: protoRoot.lookupType('folio.v1.ClientMessage'),
    ServerMessage: protoRoot.lookupType('folio.v1.ServerMessage')
  }
}

/**
 * A Folio-protocol editor on /ws: Hello, Subscribe with its state vector,
 * then its Y.Doc and Awareness are kept in sync both ways, with acks.
 */
export class FolioClient {
  static async join (server, doc, name, cleanup) {
    const { ClientMessage, ServerMessage } = await proto()
    const client = new FolioClient(doc, ClientMessage, ServerMessage)
    cleanup.push(() => client.close())
    await client.connect(server.wsUrl, name)
    return client
  }

  constructor (doc, ClientMessage, ServerMessage) {
    this.doc = doc
    this.ClientMessage = ClientMessage
    this.ServerMessage = ServerMessage
    this.ydoc = new Y.Doc()
    this.text = this.ydoc.getText(TEXT)
    this.awareness = new awarenessProtocol.Awareness(this.ydoc)
    this.nextSeq = 1
    this.unacked = new Set()
    this.errors = []
    this.inbox = []
    this.ydoc.on('update', (update, origin) => {
      if (origin !== this && this.ws?.readyState === WebSocket.OPEN) {
        this.send({ update: { doc, update, seq: this.track() } })
      }
    })
    this.awareness.on('update', ({ added, updated, removed }, origin) => {
      if (origin === this) return
      const changed = added.concat(updated, removed)
      const update = awarenessProtocol.encodeAwarenessUpdate(this.awareness, changed)
      this.send({ awareness: { doc, update } })
    })
  }

  track () {
    const seq = this.nextSeq++
    this.unacked.add(seq)
    return seq
  }

  async connect (url, name) {
    this.ws = new WebSocket(url)
    this.ws.binaryType = 'nodebuffer'
    this.ws.on('message', (data) => this.onFrame(data))
    await new Promise((resolve, reject) => {
      this.ws.once('open', resolve)
      this.ws.once('error', reject)
    })
    this.send({ hello: { protocolVersion: 1, clientName: name } })
    await this.expect('welcome')
    const sv = Y.encodeStateVector(this.ydoc)
    this.send({ subscribe: { doc: this.doc, stateVector: sv } })
    const synced = await this.expect('synced')
    Y.applyUpdate(this.ydoc, synced.update, this)
    if (synced.awareness.length > 0) {
      awarenessProtocol.applyAwarenessUpdate(this.awareness, synced.awareness, this)
    }
    const missing = Y.encodeStateAsUpdate(this.ydoc, synced.stateVector)
    if (missing.length > 2) this.send({ update: { doc: this.doc, update: missing, seq: this.track() } })
    // The local presence set before connecting goes out now.
    if (this.awareness.getLocalState() !== null) {
      const update = awarenessProtocol.encodeAwarenessUpdate(this.awareness, [this.ydoc.clientID])
      this.send({ awareness: { doc: this.doc, update } })
    }
  }

  send (kind) {
    if (!this.ws || this.ws.readyState !== WebSocket.OPEN) return
    this.ws.send(this.ClientMessage.encode(this.ClientMessage.create(kind)).finish())
  }

  onFrame (data) {
    const msg = this.ServerMessage.decode(data)
    const kind = msg.kind
    const body = msg[kind]
    switch (kind) {
      case 'update':
        Y.applyUpdate(this.ydoc, body.update, this)
        break
      case 'awareness':
        awarenessProtocol.applyAwarenessUpdate(this.awareness, body.update, this)
        break
      case 'ack':
        this.unacked.delete(Number(body.seq))
        break
      case 'error':
        this.errors.push(body)
        break
      default:
        this.inbox.push({ kind, body })
    }
  }

  /** The next message of `kind` not handled above (bounded). */
  async expect (kind) {
    const found = await waitFor(`a ${kind} message`, () => {
      if (this.errors.length > 0) throw new Error(`refused: ${JSON.stringify(this.errors)}`)
      const at = this.inbox.findIndex((m) => m.kind === kind)
      return at >= 0 && this.inbox.splice(at, 1)[0]
    })
    return found.body
  }

  /** Resolves once every update sent is durable (acknowledged). */
  acked () {
    return waitFor('acks', () => this.unacked.size === 0)
  }

  close () {
    this.awareness.destroy()
    this.ws?.terminate()
    this.ydoc.destroy()
  }
}

/**
 * A raw WebSocket to /yjs/{doc}; resolves once open. `closed` resolves
 * with the close code and reason.
 */
export async function rawYjsSocket (server, doc, cleanup) {
  const ws = new WebSocket(`${server.yjsUrl}/${doc}`)
  cleanup.push(() => ws.terminate())
  const closed = new Promise((resolve) => {
    ws.once('close', (code, reason) => resolve({ code, reason: reason.toString() }))
  })
  await new Promise((resolve, reject) => {
    ws.once('open', resolve)
    ws.once('error', reject)
  })
  return { ws, closed }
}

