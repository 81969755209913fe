// A y-websocket provider still open on a document when it is deleted keeps
// reconnecting with its copy; the tombstone refuses every attempt (close
// 4004), across a restart, until a PUT re-creates the id.

import assert from 'node:assert/strict'
import { after, test } from 'node:test'

import { runCleanup, serverText, startServer, synced, tempDir, waitFor, yjsClient } from './support.js'

const cleanup = []
after(() => runCleanup(cleanup))

const DOC = 'node/deleted'

/** Counts the provider's closes by code, and its connects. */
function watchCloses (provider) {
  const seen = { connects: 0, closes: new Map() }
  provider.on('status', ({ status }) => { if (status === 'connected') seen.connects++ })
  provider.on('connection-close', (event) => {
    if (event) seen.closes.set(event.code, (seen.closes.get(event.code) ?? 0) + 1)
  })
  return seen
}

async function status (server, doc) {
  return (await fetch(`${server.http}/docs/${encodeURIComponent(doc)}/text`)).status
}

test('a provider open on a deleted document cannot push its copy back', { timeout: 120_000 }, async () => {
  const dir = tempDir(cleanup)
  const first = await startServer(dir)
  cleanup.push(() => first.stop('SIGKILL'))

  // Short backoff, so that the provider retries many times within the test.
  const old = yjsClient(first, DOC, cleanup, { maxBackoffTime: 100 })
  const seen = watchCloses(old.provider)
  await synced(old.provider)
  old.text.insert(0, 'the old copy')
  await waitFor('the server to have it', async () => (await serverText(first, DOC)) === 'the old copy')

  const deleted = await fetch(`${first.http}/docs/${encodeURIComponent(DOC)}`, { method: 'DELETE' })
  assert.equal(deleted.status, 204)
  // The provider keeps its copy and keeps reconnecting; each attempt is
  // refused with 4004 (the server closes after the upgrade, so the provider
  // counts it as a connect too).
  await waitFor('several refused reconnects', () => (seen.closes.get(4004) ?? 0) >= 3)
  // An edit made meanwhile is refused the same way.
  old.text.insert(old.text.length, ' and more')
  await waitFor('another refused reconnect', () => (seen.closes.get(4004) ?? 0) >= 5)
  assert.equal(await status(first, DOC), 410)
  const list = await (await fetch(`${first.http}/docs`)).json()
  assert.ok(!JSON.stringify(list).includes(DOC), `listed after delete: ${JSON.stringify(list)}`)

  // The tombstone is on disk: after a crash and restart on the same port the
  // provider's reconnects are still refused.
  await first.stop('SIGKILL')
  const before = seen.closes.get(4004) ?? 0
  const second = await startServer(dir, { addr: first.addr })
  cleanup.push(() => second.stop())
  await waitFor('refused reconnects after the restart', () => (seen.closes.get(4004) ?? 0) >= before + 3)
  assert.equal(await status(second, DOC), 410)
  assert.equal(old.text.toString(), 'the old copy and more')

  // Re-created explicitly, the id is a fresh document with the PUT's text.
  old.provider.destroy()
  const put = await fetch(`${second.http}/docs/${encodeURIComponent(DOC)}`, {
    method: 'PUT',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ text: 'new life' })
  })
  assert.equal(put.status, 201)
  assert.equal(await serverText(second, DOC), 'new life')
  const fresh = yjsClient(second, DOC, cleanup)
  await synced(fresh.provider)
  assert.equal(fresh.text.toString(), 'new life')
})
