// Helpers for the Node tests: run the real `folio` binary, connect the real
// `y-websocket` provider to it, and speak Folio's own protobuf protocol on
// /ws for the mixed-protocol tests. Every wait is bounded.

import { spawn } from 'node:child_process'
import { mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import path from 'node:path'
import { fileURLToPath } from 'node:url'

import protobuf from 'protobufjs'
import WebSocket from 'ws'
import * as Y from 'yjs'
import { WebsocketProvider } from 'y-websocket'
import * as awarenessProtocol from 'y-protocols/awareness'

const here = path.dirname(fileURLToPath(import.meta.url))
const repoRoot = path.resolve(here, '../../..')

/** The root Y.Text every Folio client edits. */
export const TEXT = 'content'

/** How long any single wait may take before the test fails. */
export const PATIENCE_MS = 30_000

/** The server binary: $FOLIO_BIN (relative to the cwd) or target/debug/folio. */
export const folioBin = process.env.FOLIO_BIN
  ? path.resolve(process.cwd(), process.env.FOLIO_BIN)
  : path.join(repoRoot, 'target/debug/folio')

export const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms))

/** Polls `check` until it returns a truthy value; throws after `timeoutMs`. */
export async function waitFor (what, check, timeoutMs = PATIENCE_MS) {
  const deadline = Date.now() + timeoutMs
  for (;;) {
    const value = await check()
    if (value) return value
    if (Date.now() > deadline) throw new Error(`gave up waiting for ${what}`)
    await sleep(20)
  }
}

/** A fresh temp dir, removed by `cleanup`. */
export function tempDir (cleanup) {
  const dir = mkdtempSync(path.join(tmpdir(), 'folio-yjs-'))
  cleanup.push(() => rmSync(dir, { recursive: true, force: true }))
  return dir
}

const running = new Set()
// A test that throws still leaves no server behind.
process.on('exit', () => {
  for (const child of running) child.kill('SIGKILL')
})

/**
 * Starts `folio serve` on `dataDir` and resolves once it listens. `addr`
 * defaults to an ephemeral port; pass the old one to restart in place.
 */
export async function startServer (dataDir, { addr = '127.0.0.1:0', args = [] } = {}) {
  const child = spawn(folioBin, ['serve', '--addr', addr, '--data-dir', dataDir, ...args], {
    env: { ...process.env, RUST_LOG: 'info', NO_COLOR: '1' },
    stdio: ['ignore', 'pipe', 'inherit']
  })
  running.add(child)
  child.on('exit', () => running.delete(child))
  const listening = await new Promise((resolve, reject) => {
    let buffered = ''
    const timer = setTimeout(() => reject(new Error('folio did not start listening')), PATIENCE_MS)
    const onData = (chunk) => {
      buffered += chunk.toString()
      for (const line of buffered.split('\n')) {
        // eslint-disable-next-line no-control-regex
        const plain = line.replace(/\x1b\[[0-9;]*m/g, '')
        const found = plain.includes('folio serving') && plain.match(/addr=(\S+)/)
        if (found) {
          clearTimeout(timer)
          child.stdout.off('data', onData)
          child.stdout.resume() // keep draining, so the child never blocks on a full pipe
          resolve(found[1])
          return
        }
      }
    }
    child.stdout.on('data', onData)
    child.once('exit', (code) => {
      clearTimeout(timer)
      reject(new Error(`folio exited with ${code} before listening`))
    })
  })
  return {
    addr: listening,
    http: `http://${listening}`,
    yjsUrl: `ws://${listening}/yjs`,
    wsUrl: `ws://${listening}/ws`,
    child,
    /** Stops the server with `signal` and waits for it to exit. */
    async stop (signal = 'SIGTERM') {
      if (child.exitCode !== null || child.signalCode !== null) return
      const exited = new Promise((resolve) => child.once('exit', resolve))
      child.kill(signal)
      await within(`folio to exit on ${signal}`, exited)
    }
  }
}

/** The server's text of `doc` (null if it does not exist). */
export async function serverText (server, doc) {
  const resp = await fetch(`${server.http}/docs/${encodeURIComponent(doc)}/text`)
  return resp.ok ? resp.text() : null
}

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

/** Awaits `promise`, failing after `ms`. */
export function within (what, promise, ms = PATIENCE_MS) {
  let timer
  const timeout = new Promise((resolve, reject) => {
    timer = setTimeout(() => reject(new Error(`timed out: ${what}`)), ms)
  })
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer))
}

/** Runs every cleanup step, newest first, never throwing. */
export async function runCleanup (cleanup) {
  while (cleanup.length > 0) {
    try {
      await cleanup.pop()()
    } catch (e) {
      console.error('cleanup failed:', e)
    }
  }
}
