// Bad input on /yjs gets the same treatment as on /ws: the offending socket
// is closed with the fitting code (y-protocols have no error message), the
// document is unchanged, and every other client goes on.

import assert from 'node:assert/strict'
import { after, before, test } from 'node:test'

import WebSocket from 'ws'

import {
  rawYjsSocket, runCleanup, serverText, startServer, synced, tempDir, waitFor, within, yjsClient
} from './support.js'

const MAX_MESSAGE_BYTES = 64 * 1024
const cleanup = []
let server

before(async () => {
  server = await startServer(tempDir(cleanup), { args: ['--max-message-bytes', String(MAX_MESSAGE_BYTES)] })
  cleanup.push(() => server.stop())
})
after(() => runCleanup(cleanup))

/** y-protocols frames: [0 sync, 2 update, len, ...] and [1 awareness, len, ...]. */
const frame = (...bytes) => Buffer.from(bytes)
const oversized = Buffer.concat([frame(0, 2, 0x81, 0x80, 0x04), Buffer.alloc(MAX_MESSAGE_BYTES + 1)])

const cases = [
  ['a text frame', 'hello', 1003],
  ['garbage', frame(0xff, 0xff, 0xff), 1007],
  ['a truncated message', frame(0, 2, 9, 1), 1007],
  ['an invalid Yjs update', frame(0, 2, 3, 0xff, 0xff, 0xff), 1007, 'invalid update'],
  ['an invalid awareness update', frame(1, 3, 0xff, 0xff, 0xff), 1007],
  ['a frame over max_message_bytes', oversized, 1009]
]

test('bad messages close only that socket, with the fitting code', { timeout: 60_000 }, async () => {
  const doc = 'node-bad-input'
  const bystander = yjsClient(server, doc, cleanup)
  await synced(bystander.provider)
  bystander.text.insert(0, 'intact')
  await waitFor('the server to have it', async () => (await serverText(server, doc)) === 'intact')

  for (const [what, data, code, reason] of cases) {
    const { ws, closed } = await rawYjsSocket(server, doc, cleanup)
    ws.send(data)
    const got = await within(`the close after ${what}`, closed)
    assert.equal(got.code, code, `${what}: closed with ${got.code} (${got.reason})`)
    if (reason) assert.match(got.reason, new RegExp(reason), what)
  }

  // The document is unchanged and the provider still works.
  assert.equal(await serverText(server, doc), 'intact')
  assert.ok(bystander.provider.wsconnected)
  bystander.text.insert(6, '!')
  await waitFor('the next edit', async () => (await serverText(server, doc)) === 'intact!')
})

test('an invalid doc id is refused with HTTP 400 before the upgrade', { timeout: 30_000 }, async () => {
  const status = await within('the refused upgrade', new Promise((resolve, reject) => {
    const ws = new WebSocket(`${server.yjsUrl}/a%20b`)
    ws.on('unexpected-response', (_req, res) => {
      resolve(res.statusCode)
      ws.terminate()
    })
    ws.on('open', () => reject(new Error('upgraded')))
    ws.on('error', () => {})
  }))
  assert.equal(status, 400)
  const resp = await fetch(`${server.http}/yjs/a%20b`)
  assert.equal(resp.status, 400)
  assert.equal((await resp.json()).error.code, 'invalid_doc_id')
})
