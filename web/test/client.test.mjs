// The TypeScript client (built to lib/) against the real `folio` binary:
// sync, awareness, acknowledged save status, one socket for many
// documents, reconnection after the server is killed, and the ping.

import assert from 'node:assert/strict'
import { after, test } from 'node:test'

import {
  editor, nodeClient, runCleanup, serverText, sleep, startServer, tempDir, waitFor
} from './support.mjs'

const cleanup = []
after(() => runCleanup(cleanup))

test('two providers type concurrently and converge with the server', async () => {
  const server = await startServer(tempDir(cleanup))
  cleanup.push(() => server.stop())
  const a = editor(nodeClient(server, 'alice', cleanup), 'sync/one', cleanup)
  const b = editor(nodeClient(server, 'bob', cleanup), 'sync/one', cleanup)
  await waitFor('both to sync', () => a.provider.synced && b.provider.synced)

  for (let i = 0; i < 20; i++) {
    a.text.insert(0, 'a')
    b.text.insert(b.text.length, 'b')
    if (i % 5 === 0) await sleep(5)
  }
  await waitFor('convergence', () =>
    a.text.length === 40 && a.text.toString() === b.text.toString())
  await waitFor('both saved', () => a.provider.status === 'saved' && b.provider.status === 'saved')
  assert.equal(await serverText(server, 'sync/one'), a.text.toString())
  assert.equal(a.text.toString().replace(/b/g, ''), 'a'.repeat(20))
})

test('awareness reaches the other provider, late joiners included, and leaves with it', async () => {
  const server = await startServer(tempDir(cleanup))
  cleanup.push(() => server.stop())
  const a = editor(nodeClient(server, 'alice', cleanup), 'presence', cleanup)
  a.awareness.setLocalStateField('user', { name: 'Alice', color: '#d33' })
  await waitFor('a to sync', () => a.provider.synced)

  const bClient = nodeClient(server, 'bob', cleanup)
  const b = editor(bClient, 'presence', cleanup)
  const aliceSeen = () => [...b.awareness.getStates().values()].find((s) => s.user?.name === 'Alice')
  await waitFor('Alice in the late joiner\'s Synced', aliceSeen)

  b.awareness.setLocalStateField('user', { name: 'Bob', color: '#33d' })
  await waitFor('Bob at Alice', () =>
    [...a.awareness.getStates().values()].some((s) => s.user?.name === 'Bob'))
  a.awareness.setLocalStateField('cursor', { anchor: 1, head: 1 })
  await waitFor('Alice\'s change at Bob', () => aliceSeen()?.cursor?.head === 1)

  // The watcher feed sees the same presence.
  const feed = await fetch(`${server.http}/docs/presence/events`)
  const reader = feed.body.getReader()
  const { value } = await reader.read()
  await reader.cancel()
  const reset = new TextDecoder().decode(value)
  assert.match(reset, /"name":"Alice"/)

  b.provider.destroy()
  await waitFor('Bob to leave Alice\'s view', () =>
    ![...a.awareness.getStates().values()].some((s) => s.user?.name === 'Bob'))
})

test('status is saving until the ack and saved only once durable (kill -9 keeps it)', async () => {
  const dir = tempDir(cleanup)
  const server = await startServer(dir)
  cleanup.push(() => server.stop('SIGKILL'))
  const client = nodeClient(server, 'writer', cleanup)
  const a = editor(client, 'status', cleanup)
  await waitFor('saved after sync', () => a.provider.status === 'saved')
  assert.deepEqual(a.statuses, ['saving', 'saved'])

  a.text.insert(0, 'durable words')
  assert.equal(a.provider.status, 'saving', 'a local edit is unsaved until its Ack')
  assert.equal(a.provider.unsavedUpdates, 1)
  await waitFor('the ack', () => a.provider.status === 'saved')
  assert.deepEqual(a.statuses, ['saving', 'saved', 'saving', 'saved'])

  // "Saved" means on disk: a crash right now loses nothing.
  await server.stop('SIGKILL')
  await waitFor('offline status', () => a.provider.status === 'offline')
  const again = await startServer(dir)
  cleanup.push(() => again.stop())
  assert.equal(await serverText(again, 'status'), 'durable words')
})

test('one connection follows several documents independently', async () => {
  const server = await startServer(tempDir(cleanup))
  cleanup.push(() => server.stop())
  const client = nodeClient(server, 'multi', cleanup)
  let onlines = 0
  client.on('online', () => onlines++)
  const docs = ['multi/a', 'multi/b', 'multi/c'].map((id) => editor(client, id, cleanup))
  docs.forEach((d, i) => d.text.insert(0, `doc ${i}`))
  await waitFor('all saved', () => docs.every((d) => d.provider.status === 'saved'))
  for (const [i, id] of ['multi/a', 'multi/b', 'multi/c'].entries()) {
    assert.equal(await serverText(server, id), `doc ${i}`)
  }
  const list = (await (await fetch(`${server.http}/docs?prefix=multi/`)).json()).docs
  assert.deepEqual(list.filter((d) => d.id.startsWith('multi/')).map((d) => d.subscribers), [1, 1, 1])
  assert.equal(onlines, 1, 'one WebSocket, one handshake')

  // Unbinding one document leaves the others followed.
  docs[1].provider.destroy()
  await waitFor('b unsubscribed', async () => {
    const now = (await (await fetch(`${server.http}/docs?prefix=multi/`)).json()).docs
    return now.find((d) => d.id === 'multi/b').subscribers === 0
  })
  docs[0].text.insert(0, '>')
  await waitFor('a saved', () => docs[0].provider.status === 'saved')
  assert.equal(await serverText(server, 'multi/a'), '>doc 0')
})

test('edits made while the server is down (kill -9) are kept, resent and acknowledged', { timeout: 120_000 }, async () => {
  const dir = tempDir(cleanup)
  const first = await startServer(dir)
  cleanup.push(() => first.stop('SIGKILL'))
  const client = nodeClient(first, 'survivor', cleanup)
  const online = []
  const offline = []
  client.on('online', (s) => online.push(s.connectionId))
  client.on('offline', (why) => offline.push(why))
  const a = editor(client, 'crash/doc', cleanup)
  a.text.insert(0, 'before ')
  await waitFor('saved before the crash', () => a.provider.status === 'saved')

  await first.stop('SIGKILL')
  await waitFor('the offline event', () => offline.length === 1)
  assert.equal(a.provider.status, 'offline')
  assert.equal(a.provider.synced, false)
  a.text.insert(a.text.length, 'during ')
  a.text.insert(a.text.length, 'the outage')
  assert.equal(a.provider.unsavedUpdates, 2, 'offline edits are kept')
  assert.equal(a.provider.status, 'offline')
  // The client keeps retrying (with backoff) while the port is closed.
  await sleep(300)

  const second = await startServer(dir, { addr: first.addr })
  cleanup.push(() => second.stop())
  await waitFor('reconnected and saved', () => online.length === 2 && a.provider.status === 'saved')
  assert.equal(a.provider.unsavedUpdates, 0)
  assert.equal(await serverText(second, 'crash/doc'), 'before during the outage')
  assert.deepEqual(a.statuses.slice(-3), ['offline', 'saving', 'saved'])

  // A fresh client gets everything, and live editing goes on.
  const b = editor(nodeClient(second, 'newcomer', cleanup), 'crash/doc', cleanup)
  await waitFor('the newcomer to sync', () => b.provider.synced)
  assert.equal(b.text.toString(), 'before during the outage')
  a.text.insert(0, '> ')
  await waitFor('live again', () => b.text.toString() === '> before during the outage')
})

test('a server that stops answering pings is dropped and reconnected to', { timeout: 60_000 }, async () => {
  const server = await startServer(tempDir(cleanup))
  cleanup.push(async () => {
    server.child.kill('SIGCONT')
    await server.stop()
  })
  const client = nodeClient(server, 'pinger', cleanup, { pingIntervalMs: 100, pingTimeoutMs: 400 })
  const a = editor(client, 'ping', cleanup)
  await waitFor('saved', () => a.provider.status === 'saved')
  // Several ping intervals pass on a healthy connection without a drop.
  let drops = 0
  client.on('offline', () => drops++)
  await sleep(500)
  assert.equal(drops, 0)

  // A frozen server keeps the TCP connection open but answers nothing.
  server.child.kill('SIGSTOP')
  await waitFor('the ping timeout to drop the connection', () => drops === 1)
  assert.equal(a.provider.status, 'offline')
  a.text.insert(0, 'typed while frozen')
  server.child.kill('SIGCONT')
  await waitFor('reconnected and saved', () => client.online && a.provider.status === 'saved')
  assert.equal(await serverText(server, 'ping'), 'typed while frozen')
})

test('a deleted document is not brought back by the provider', async () => {
  const server = await startServer(tempDir(cleanup))
  cleanup.push(() => server.stop())
  const a = editor(nodeClient(server, 'deleter', cleanup), 'doomed', cleanup)
  a.text.insert(0, 'short-lived')
  await waitFor('saved', () => a.provider.status === 'saved')
  const errors = []
  a.provider.on('error', (e) => errors.push(e.code))

  const resp = await fetch(`${server.http}/docs/doomed`, { method: 'DELETE' })
  assert.equal(resp.status, 204)
  await waitFor('the deletion to reach the provider', () => a.provider.deleted)
  assert.equal(a.provider.status, 'offline')
  a.text.insert(0, 'still typing ')
  await sleep(200)
  assert.equal(await serverText(server, 'doomed'), null, 'nothing recreated the document')
  assert.equal(a.provider.unsavedUpdates, 1)
  assert.ok(errors.length >= 1)
})
