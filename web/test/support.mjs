// Helpers shared by the Node and browser tests: run the real `folio`
// binary ($FOLIO_BIN, or the repository's target/debug/folio) on a temp
// data dir, talk to its HTTP API, and wait for conditions with a bound.

import { execFile, spawn } from 'node:child_process'
import { mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import path from 'node:path'
import { fileURLToPath } from 'node:url'

import WebSocket from 'ws'
import * as Y from 'yjs'

import { FolioClient, FolioProvider, TEXT_NAME } from '../lib/index.js'

const here = path.dirname(fileURLToPath(import.meta.url))
export const webRoot = path.resolve(here, '..')
const repoRoot = path.resolve(webRoot, '..')

/** How long any single wait may take before the test fails. */
export const PATIENCE_MS = 30_000

/** The server binary: $FOLIO_BIN (relative to the cwd) or target/debug/folio. */
export const folioBin = process.env.FOLIO_BIN
  ? path.resolve(process.cwd(), process.env.FOLIO_BIN)
  : path.join(process.env.CARGO_TARGET_DIR ?? path.join(repoRoot, 'target'), 'debug/folio')

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

/** A fresh temp dir, removed by the cleanup. */
export function tempDir (cleanup) {
  const dir = mkdtempSync(path.join(tmpdir(), 'folio-web-'))
  cleanup.push(() => rmSync(dir, { recursive: true, force: true }))
  return dir
}

const running = new Set()
// A test that throws still leaves no server behind.
process.on('exit', () => {
  for (const child of running) child.kill('SIGKILL')
})

/**
 * Starts `folio serve` on `dataDir`; resolves once it listens. `addr`
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
      // eslint-disable-next-line no-control-regex
      const found = buffered.replace(/\x1b\[[0-9;]*m/g, '').match(/folio serving.*?addr=(\S+)/)
      if (found) {
        clearTimeout(timer)
        child.stdout.off('data', onData)
        child.stdout.resume() // keep draining so the child never blocks on a full pipe
        resolve(found[1])
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
    wsUrl: `ws://${listening}/ws`,
    child,
    /** Sends `signal` and waits for the process to exit. */
    async stop (signal = 'SIGTERM') {
      if (child.exitCode !== null || child.signalCode !== null) return
      const exited = new Promise((resolve) => child.once('exit', resolve))
      child.kill(signal)
      await waitFor(`folio to exit on ${signal}`, () => child.exitCode !== null || child.signalCode !== null)
      await exited
    }
  }
}

/**
 * The server's text of `doc` (read with `token` if given), or null if it has no such
 * document: 404, or 410 for a deleted one (its tombstone keeps it deleted).
 */
export async function serverText (server, doc, token) {
  const headers = token ? { authorization: `Bearer ${token}` } : {}
  const resp = await fetch(`${server.http}/docs/${encodeURIComponent(doc)}/text`, { headers })
  if (resp.status === 404 || resp.status === 410) return null
  if (!resp.ok) throw new Error(`GET text of ${doc}: HTTP ${resp.status}`)
  return resp.text()
}

/** A secret for `folio serve --auth-secret` in tests (at least 32 bytes). */
export const AUTH_SECRET = 'web-tests-secret-0123456789abcdef0123456789'

/**
 * Mints a token with the real `folio token` command: `docs` is one pattern
 * or several, `ttl` as the CLI takes it (`1h`, `4s`).
 */
export function mintToken ({ docs, role = 'write', ttl = '1h', sub, secret = AUTH_SECRET }) {
  const args = ['token', '--role', role, '--ttl', ttl, '--auth-secret', secret]
  for (const doc of [docs].flat()) args.push('--doc', doc)
  if (sub !== undefined) args.push('--sub', sub)
  return new Promise((resolve, reject) => {
    execFile(folioBin, args, { timeout: PATIENCE_MS }, (err, stdout) => {
      if (err) reject(err)
      else resolve(stdout.trim())
    })
  })
}

/**
 * A FolioClient on Node (the `ws` package) with short ping and backoff
 * settings so that tests notice failures quickly.
 */
export function nodeClient (server, name, cleanup, options = {}) {
  const client = new FolioClient(server.wsUrl, {
    name,
    WebSocket,
    minBackoffMs: 50,
    maxBackoffMs: 500,
    ...options
  })
  cleanup.push(() => client.destroy())
  return client
}

/** A provider on a fresh Y.Doc, with the events it emitted recorded. */
export function editor (client, doc, cleanup) {
  const ydoc = new Y.Doc()
  const provider = new FolioProvider(client, doc, ydoc)
  const statuses = []
  provider.on('status', ({ status }) => statuses.push(status))
  cleanup.push(() => {
    provider.destroy()
    ydoc.destroy()
  })
  return { ydoc, provider, text: ydoc.getText(TEXT_NAME), awareness: provider.awareness, statuses }
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

/**
 * Debian's chromium (`apt-get install chromium`), never a downloaded
 * browser: $CHROMIUM_PATH or /usr/bin/chromium. Playwright gives every
 * launch a fresh temporary profile (user data dir) of its own.
 */
export async function launchBrowser (cleanup) {
  const { chromium } = await import('playwright-core')
  const browser = await chromium.launch({
    executablePath: process.env.CHROMIUM_PATH ?? '/usr/bin/chromium',
    args: [
      '--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
      '--disable-background-networking', '--disable-component-update', '--disable-sync'
    ]
  })
  cleanup.push(() => browser.close())
  return browser
}

/** Where the browser tests save their screenshots (not committed). */
export const screenshotDir = path.join(webRoot, 'test-output')
