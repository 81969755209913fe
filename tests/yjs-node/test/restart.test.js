// The provider reconnects after the server is killed (SIGKILL) and started
// again on the same data dir and port, and nothing the server had made
// durable is lost.

import assert from 'node:assert/strict'
import { after, test } from 'node:test'

import {
  durableBarrier, runCleanup, serverText, startServer, synced, tempDir, waitFor, yjsClient
} from './support.js'

const cleanup = []
after(() => runCleanup(cleanup))

test('the provider reconnects after kill -9 and a restart, losing nothing', { timeout: 120_000 }, async () => {
  const dir = tempDir(cleanup)
  const first = await startServer(dir)
  cleanup.push(() => first.stop('SIGKILL'))

  // One provider writes and leaves: after the restart only the disk can
  // have its text.
  const gone = yjsClient(first, 'node/durable', cleanup)
  await synced(gone.provider)
  gone.text.insert(0, 'written before the crash')
  await waitFor('the server to have it', async () =>
    (await serverText(first, 'node/durable')) === 'written before the crash')

  // Another stays connected through the crash.
  const stays = yjsClient(first, 'node-reconnect', cleanup)
  let connects = 0
  stays.provider.on('status', ({ status }) => { if (status === 'connected') connects++ })
  await synced(stays.provider)
  stays.text.insert(0, 'first ')
  await waitFor('the server to have it', async () =>
    (await serverText(first, 'node-reconnect')) === 'first ')

  // y-protocols have no acks; this is the moment a Folio client would have
  // had its Ack.
  await durableBarrier(first, 'node/durable')
  gone.provider.destroy()
  await first.stop('SIGKILL')
  await waitFor('the provider to notice', () => !stays.provider.wsconnected)
  stays.text.insert(stays.text.length, 'offline ')

  const second = await startServer(dir, { addr: first.addr })
  cleanup.push(() => second.stop())
  assert.equal(await serverText(second, 'node/durable'), 'written before the crash')

  await waitFor('the provider to reconnect and sync', () => connects >= 2 && stays.provider.synced)
  await waitFor('the offline edit to reach the server', async () =>
    (await serverText(second, 'node-reconnect')) === 'first offline ')
  const fresh = yjsClient(second, 'node-reconnect', cleanup)
  await synced(fresh.provider)
  assert.equal(fresh.text.toString(), 'first offline ')
  stays.text.insert(stays.text.length, 'live')
  await waitFor('the live edit to reach a fresh client', () =>
    fresh.text.toString() === 'first offline live')
})
