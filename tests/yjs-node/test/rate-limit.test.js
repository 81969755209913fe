// A provider that types a burst far over the per-connection update rate and
// then goes quiet. The server drops the excess (y-protocols have no error
// message to refuse it with), so it must ask for it back on its own: once
// the bucket refills it sends its sync step 1, and the provider's step 2
// brings what was dropped. Every reader must end with the writer's text
// although the writer sends nothing but that reply.

import assert from 'node:assert/strict'
import { after, before, test } from 'node:test'

import {
  FolioClient, runCleanup, serverText, startServer, synced, tempDir, waitFor, yjsClient
} from './support.js'

const cleanup = []
let server

// A small bucket, so most of the burst is dropped and the server's step 1
// and the provider's step 2 meet a bucket that is often empty as well.
const UPDATES_PER_SEC = 200
const UPDATE_BURST = 100
const BURST = 20_000

before(async () => {
  server = await startServer(tempDir(cleanup), {
    args: ['--updates-per-sec', String(UPDATES_PER_SEC), '--update-burst', String(UPDATE_BURST)]
  })
  cleanup.push(() => server.stop())
})
after(() => runCleanup(cleanup))

/** The server's count of dropped updates. */
async function droppedUpdates () {
  const body = await (await fetch(`${server.http}/metrics`)).text()
  const line = body.split('\n').find((l) => l.startsWith('folio_rate_limited_total{kind="update"}'))
  return line ? Number(line.split(' ').pop()) : 0
}

/**
 * Records what `provider` sends from now on, other than a sync step 2
 * (the answer to the server's step 1): y-protocols message type 0 (sync),
 * subtype 1 (step 2).
 */
function recordUnprompted (provider) {
  const log = { silent: false, spoke: [] }
  const ws = provider.ws
  const send = ws.send.bind(ws)
  ws.send = (data, ...rest) => {
    const bytes = new Uint8Array(data)
    if (log.silent && !(bytes[0] === 0 && bytes[1] === 1)) log.spoke.push(Array.from(bytes.slice(0, 2)))
    return send(data, ...rest)
  }
  return log
}

/**
 * `writer` types `BURST` one-character transactions, yielding to the event
 * loop every `chunk` of them (so the server's step 1 can land mid-burst),
 * then goes quiet; every reader must end with its text.
 */
async function burstThenQuiet (doc, chunk) {
  const writer = yjsClient(server, doc, cleanup)
  const reader = yjsClient(server, doc, cleanup)
  await Promise.all([synced(writer.provider), synced(reader.provider)])
  const watcher = await FolioClient.join(server, doc, 'node-watcher', cleanup)
  let reconnects = 0
  writer.provider.on('connection-close', () => { reconnects++ })
  // No presence: the awareness renewal every 15 s would be the writer
  // speaking again.
  writer.awareness.setLocalState(null)
  const before = await droppedUpdates()

  const sent = recordUnprompted(writer.provider)
  // One character per transaction: each is its own update message.
  for (let i = 0; i < BURST; i++) {
    writer.ydoc.transact(() => writer.text.insert(i, String.fromCharCode(97 + (i % 26))))
    if (i % chunk === chunk - 1) await new Promise((resolve) => setTimeout(resolve, 1))
  }
  sent.silent = true
  const expected = writer.text.toString()
  assert.equal(expected.length, BURST)

  // The server dropped part of the burst: the limit bit.
  await waitFor('the server to drop part of the burst', async () => (await droppedUpdates()) > before)

  await waitFor('every reader to hold the writer\'s text', async () => {
    return reader.text.toString() === expected &&
      watcher.text.toString() === expected &&
      (await serverText(server, doc)) === expected
  }, 120_000)
  assert.deepEqual(sent.spoke, [], 'the writer sent something other than a step 2')
  assert.equal(reconnects, 0, 'the writer reconnected (and so resynced on its own)')
}

test('a burst over the update rate, sent at once, reaches every reader after the writer goes quiet', { timeout: 180_000 }, async () => {
  await burstThenQuiet('node-rate-burst', BURST)
})

test('a burst over the update rate, sent in chunks, reaches every reader after the writer goes quiet', { timeout: 180_000 }, async () => {
  await burstThenQuiet('node-rate-chunks', 500)
})
