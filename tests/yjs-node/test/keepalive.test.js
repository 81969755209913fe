// The provider closes a connection that hears nothing for 30 s. The server
// keeps a quiet connection alive, so a lone provider stays connected
// instead of reconnecting every 30 s.

import assert from 'node:assert/strict'
import { after, before, test } from 'node:test'

import { runCleanup, sleep, startServer, synced, tempDir, yjsClient } from './support.js'

const cleanup = []
let server

before(async () => {
  server = await startServer(tempDir(cleanup))
  cleanup.push(() => server.stop())
})
after(() => runCleanup(cleanup))

test('a quiet provider stays connected past its 30 s watchdog', { timeout: 90_000 }, async () => {
  const alone = yjsClient(server, 'node-quiet', cleanup)
  let closes = 0
  alone.provider.on('connection-close', () => { closes++ })
  await synced(alone.provider)
  // The watchdog checks every 3 s for 30 s of silence.
  await sleep(36_000)
  assert.equal(closes, 0, 'the provider dropped a healthy connection')
  assert.ok(alone.provider.wsconnected)
})
