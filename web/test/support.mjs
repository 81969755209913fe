// Helpers shared by the Node and browser tests: the server, temp dirs and
// bounded waits come from tests/node-support/folio.mjs (shared with
// tests/yjs-node); here are tokens, Folio clients and the browser.

import { execFile } from 'node:child_process'
import path from 'node:path'
import { fileURLToPath } from 'node:url'

import WebSocket from 'ws'
import * as Y from 'yjs'

import { FolioClient, FolioProvider, TEXT_NAME } from '../lib/index.js'
import { folioBin, PATIENCE_MS } from '../../tests/node-support/folio.mjs'

export {
  folioBin, PATIENCE_MS, runCleanup, serverText, sleep, startServer, tempDir, waitFor, within
} from '../../tests/node-support/folio.mjs'

const here = path.dirname(fileURLToPath(import.meta.url))
export const webRoot = path.resolve(here, '..')

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
