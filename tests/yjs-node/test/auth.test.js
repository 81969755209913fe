// Access control with the real y-websocket provider: the token travels in
// `params`, a read-only provider stays connected while its edits are
// dropped, and an expired token ends in a final 4440 close (`closed`), after
// which the app sets a fresh token and calls `connect()`.
// Tokens are signed here with node:crypto, as an app's backend would.

import assert from 'node:assert/strict'
import { createHmac } from 'node:crypto'
import { after, before, mock, test } from 'node:test'

import { runCleanup, startServer, synced, tempDir, waitFor, within, yjsClient } from './support.js'

const SECRET = 'node-test-secret-0123456789abcdef-012345'
const cleanup = []
let server

before(async () => {
  server = await startServer(tempDir(cleanup), { args: ['--auth-secret', SECRET] })
  cleanup.push(() => server.stop())
})
after(() => runCleanup(cleanup))

const b64url = (value) => Buffer.from(value).toString('base64url')

/** An HS256 JWT for `docs` with `role`, expiring in `ttlSecs`. */
function token (docs, role, ttlSecs, sub = 'node') {
  const header = b64url(JSON.stringify({ alg: 'HS256', typ: 'JWT' }))
  const exp = Math.floor(Date.now() / 1000) + ttlSecs
  const claims = b64url(JSON.stringify({ docs, role, exp, sub }))
  const signature = createHmac('sha256', SECRET).update(`${header}.${claims}`).digest('base64url')
  return `${header}.${claims}.${signature}`
}

async function text (doc) {
  const resp = await fetch(`${server.http}/docs/${encodeURIComponent(doc)}/text`, {
    headers: { authorization: `Bearer ${token([doc], 'read', 60)}` }
  })
  return resp.ok ? resp.text() : null
}

test('a read-only provider syncs and stays connected; its edits are dropped', { timeout: 60_000 }, async () => {
  const doc = 'node-auth/read'
  const writer = yjsClient(server, doc, cleanup, { params: { token: token(['node-auth/*'], 'write', 3600) } })
  await synced(writer.provider)
  writer.text.insert(0, 'by the writer')
  await waitFor('the writer\'s edit on the server', async () => (await text(doc)) === 'by the writer')

  const warn = mock.method(console, 'warn', () => {})
  cleanup.push(() => warn.mock.restore())
  const reader = yjsClient(server, doc, cleanup, { params: { token: token([doc], 'read', 3600) } })
  let closes = 0
  reader.provider.on('connection-close', () => { closes++ })
  await synced(reader.provider)
  await waitFor('the reader to see the text', () => reader.text.toString() === 'by the writer')
  reader.text.insert(0, 'READER ')
  await waitFor('the permission-denied warning', () =>
    warn.mock.calls.some((c) => String(c.arguments[0]).includes('read-only')))
  // The writer goes on, the reader receives it, and the reader's edit is nowhere.
  writer.text.insert(writer.text.length, '!')
  await waitFor('the reader to get the new edit', () => reader.text.toString().endsWith('!'))
  assert.equal(await text(doc), 'by the writer!')
  assert.equal(writer.text.toString(), 'by the writer!')
  assert.equal(closes, 0, 'a read-only provider is not disconnected')
})

test('an expired token closes with 4440; a fresh token and connect() resume', { timeout: 60_000 }, async () => {
  const doc = 'node-auth/expiry'
  const client = yjsClient(server, doc, cleanup, { params: { token: token([doc], 'write', 3) } })
  const closed = new Promise((resolve) => client.provider.once('closed', resolve))
  await synced(client.provider)
  client.text.insert(0, 'before')
  await waitFor('the first edit on the server', async () => (await text(doc)) === 'before')

  const event = await within('the expiry close', closed)
  assert.equal(event.code, 4440)
  assert.equal(client.provider.shouldConnect, false, 'the provider does not retry an expired token')
  client.text.insert(client.text.length, ' and after')

  client.provider.params.token = token([doc], 'write', 3600)
  client.provider.connect()
  await synced(client.provider)
  await waitFor('the offline edit on the server', async () => (await text(doc)) === 'before and after')
})

test('no token, or one for another document, is a final close', { timeout: 60_000 }, async () => {
  for (const [params, code] of [[{}, 4401], [{ token: token(['elsewhere'], 'write', 60) }, 4403]]) {
    const client = yjsClient(server, 'node-auth/closed', cleanup, { params })
    const event = await within(`close ${code}`, new Promise((resolve) => client.provider.once('closed', resolve)))
    assert.equal(event.code, code)
  }
})
