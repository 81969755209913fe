// The one place the Node test suites (web/test and tests/yjs-node) start the
// real `folio` binary and wait for things. Node built-ins only, so that it
// loads from either package without a node_modules of its own; each suite's
// support file re-exports it beside its own helpers.

import { spawn } from 'node:child_process'
import { mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import path from 'node:path'
import { fileURLToPath } from 'node:url'

const here = path.dirname(fileURLToPath(import.meta.url))
export const repoRoot = path.resolve(here, '../..')

/** How long any single wait may take before the test fails. */
export const PATIENCE_MS = 30_000

/**
 * The server binary: $FOLIO_BIN (relative to the cwd), else
 * $CARGO_TARGET_DIR/debug/folio, else the repository's target/debug/folio.
 */
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

/** `promise`, or a rejection after `ms`. */
export function within (what, promise, ms = PATIENCE_MS) {
  let timer
  const timeout = new Promise((resolve, reject) => {
    timer = setTimeout(() => reject(new Error(`timed out: ${what}`)), ms)
  })
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer))
}

/** A fresh temp dir, removed by `cleanup`. */
export function tempDir (cleanup) {
  const dir = mkdtempSync(path.join(tmpdir(), 'folio-node-'))
  cleanup.push(() => rmSync(dir, { recursive: true, force: true }))
  return dir
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
      // eslint-disable-next-line no-control-regex
      const found = buffered.replace(/\x1b\[[0-9;]*m/g, '').match(/folio serving.*?addr=(\S+)/)
      if (found) {
        clearTimeout(timer)
        child.stdout.off('data', onData)
        child.stdout.resume() // keep draining, so the child never blocks on a full pipe
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
    yjsUrl: `ws://${listening}/yjs`,
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

/**
 * The server's text of `doc` (read with `token` if given), or null if it has
 * no such document: 404, or 410 for a deleted one (its tombstone keeps it
 * deleted). Any other failure throws.
 */
export async function serverText (server, doc, token) {
  const headers = token ? { authorization: `Bearer ${token}` } : {}
  const resp = await fetch(`${server.http}/docs/${encodeURIComponent(doc)}/text`, { headers })
  if (resp.status === 404 || resp.status === 410) return null
  if (!resp.ok) throw new Error(`GET text of ${doc}: HTTP ${resp.status}`)
  return resp.text()
}
