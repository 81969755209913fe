// The client with access control, against the real `folio` binary started
// with --auth-secret and tokens minted by `folio token`: a write token's
// edits are acknowledged, a read token's are refused once and kept, a
// refused subscription stops the provider (no resubscribe loop), a refused
// Hello stops the client until reauth(), and tokens are renewed with
// Reauth: by a token function before they expire, or by reauth() after.

import assert from 'node:assert/strict'
import { after, test } from 'node:test'

import { fromBinary } from '@bufbuild/protobuf'
import WebSocket from 'ws'

import { ErrorCode, tokenExpiryMs } from '../lib/index.js'
import { ClientMessageSchema } from '../lib/gen/folio/v1/folio_pb.js'
import {
  AUTH_SECRET, editor, mintToken, nodeClient, runCleanup, serverText, sleep, startServer, tempDir, waitFor
} from './support.mjs'

const cleanup = []
after(() => runCleanup(cleanup))

async function authServer () {
  const server = await startServer(tempDir(cleanup), { args: ['--auth-secret', AUTH_SECRET] })
  cleanup.push(() => server.stop())
  return server
}

/** A `ws` WebSocket that records the kind of every message the client sends. */
function recordingWebSocket (sent) {
  return class extends WebSocket {
    send (data) {
      sent.push(fromBinary(ClientMessageSchema, data).kind.case)
      super.send(data)
    }
  }
}

/** Everything a provider and its client report, for assertions. */
function record (client, provider) {
  const seen = { clientErrors: [], providerErrors: [], access: [], reauthed: 0, online: 0 }
  client.on('error', (e) => seen.clientErrors.push(ErrorCode[e.code]))
  client.on('reauthed', () => { seen.reauthed += 1 })
  client.on('online', () => { seen.online += 1 })
  provider.on('error', (e) => seen.providerErrors.push(ErrorCode[e.code]))
  provider.on('access', ({ access }) => seen.access.push(access))
  return seen
}

test('a write token edits and every edit is acknowledged', async () => {
  const server = await authServer()
  const token = await mintToken({ docs: 'auth/*', role: 'write', sub: 'alice' })
  const a = editor(nodeClient(server, 'alice', cleanup, { token }), 'auth/write', cleanup)
  await waitFor('saved after sync', () => a.provider.status === 'saved')
  a.text.insert(0, 'written with a token')
  await waitFor('the ack', () => a.provider.status === 'saved' && a.provider.unsavedUpdates === 0)
  assert.equal(a.provider.access, 'ok')
  assert.equal(await serverText(server, 'auth/write', token), 'written with a token')
})

test('a read token\'s edit is refused once, kept local, and the provider reports read-only', async () => {
  const server = await authServer()
  const writer = await mintToken({ docs: 'auth/read', role: 'write' })
  const created = await fetch(`${server.http}/docs/auth%2Fread`, {
    method: 'PUT',
    headers: { authorization: `Bearer ${writer}`, 'content-type': 'application/json' },
    body: JSON.stringify({ text: 'only the writer wrote this' })
  })
  assert.equal(created.status, 201)

  const sent = []
  const reader = await mintToken({ docs: 'auth/read', role: 'read' })
  const client = nodeClient(server, 'reader', cleanup, { token: reader, WebSocket: recordingWebSocket(sent) })
  const r = editor(client, 'auth/read', cleanup)
  const seen = record(client, r.provider)
  await waitFor('the reader to sync', () => r.provider.synced)
  assert.equal(r.text.toString(), 'only the writer wrote this')

  r.text.insert(0, 'NOT ALLOWED ')
  await waitFor('read-only', () => r.provider.access === 'read-only')
  assert.equal(r.provider.status, 'read-only')
  r.text.insert(0, 'still typing ') // kept, not sent
  // Long enough for a resend loop to show; no timing is asserted.
  await sleep(500)
  assert.deepEqual(seen.providerErrors, ['READ_ONLY'])
  assert.equal(sent.filter((k) => k === 'update').length, 1, 'the refused edit is not resent')
  assert.equal(r.provider.unsavedUpdates, 2)
  assert.deepEqual(seen.access, ['read-only'])
  assert.equal(await serverText(server, 'auth/read', writer), 'only the writer wrote this')

  // Other people's edits still arrive while read-only.
  const w = editor(nodeClient(server, 'writer', cleanup, { token: writer }), 'auth/read', cleanup)
  await waitFor('the writer to sync', () => w.provider.synced)
  w.text.insert(w.text.length, '!')
  await waitFor('the writer\'s edit at the reader', () => r.text.toString().endsWith('wrote this!'))
})

test('a token for another document gets FORBIDDEN once and the provider stops; a read token on a missing document gets DOC_NOT_FOUND', async () => {
  const server = await authServer()
  const sent = []
  const token = await mintToken({ docs: 'auth/other', role: 'write' })
  const client = nodeClient(server, 'outsider', cleanup, { token, WebSocket: recordingWebSocket(sent) })
  const f = editor(client, 'auth/secret', cleanup)
  const seen = record(client, f.provider)
  await waitFor('forbidden', () => f.provider.access === 'forbidden')
  assert.ok(f.provider.stopped)
  assert.equal(f.provider.status, 'offline')
  f.text.insert(0, 'typed after the refusal')
  await sleep(500) // long enough for a resubscribe loop to show
  assert.equal(sent.filter((k) => k === 'subscribe').length, 1, 'subscribed once, not in a loop')
  assert.equal(sent.filter((k) => k === 'update').length, 0)
  assert.deepEqual(seen.providerErrors, ['FORBIDDEN'])
  assert.equal(f.provider.unsavedUpdates, 1, 'the edit is kept')

  // A reconnect does not bring the stopped provider back either.
  client.disconnect()
  client.connect()
  await waitFor('online again', () => seen.online === 2)
  await sleep(300)
  assert.equal(sent.filter((k) => k === 'subscribe').length, 1)

  const admin = await mintToken({ docs: '*', role: 'admin' })
  assert.equal(await serverText(server, 'auth/secret', admin), null, 'nothing was created')

  // Only a writer brings a document into being.
  const reader = await mintToken({ docs: 'auth/*', role: 'read' })
  const rClient = nodeClient(server, 'reader', cleanup, { token: reader })
  const n = editor(rClient, 'auth/missing', cleanup)
  await waitFor('not found', () => n.provider.access === 'not-found')
  assert.ok(n.provider.stopped)
  assert.equal(await serverText(server, 'auth/missing', admin), null)
})

test('a refused token in Hello stops the client until reauth() gives a valid one', async () => {
  const server = await authServer()
  const sent = []
  const bad = await mintToken({ docs: 'auth/*', secret: 'another-secret-0123456789abcdef0123456789' })
  const client = nodeClient(server, 'mallory', cleanup, { token: bad, WebSocket: recordingWebSocket(sent) })
  const p = editor(client, 'auth/hello', cleanup)
  const seen = record(client, p.provider)
  await waitFor('refused', () => client.state === 'refused')
  assert.equal(client.refused.code, ErrorCode.UNAUTHORIZED)
  await sleep(500) // long enough for a reconnect loop to show
  assert.equal(sent.filter((k) => k === 'hello').length, 1, 'no reconnect with the same token')
  assert.equal(client.state, 'refused')

  p.text.insert(0, 'kept until allowed')
  const good = await mintToken({ docs: 'auth/*' })
  assert.equal(client.reauth(good), false, 'not online: the token goes in the next Hello')
  await waitFor('saved with the new token', () => p.provider.status === 'saved')
  assert.equal(await serverText(server, 'auth/hello', good), 'kept until allowed')
  assert.deepEqual(seen.clientErrors, ['UNAUTHORIZED'])
})

test('a short-lived token from a function is renewed with Reauth: edits are acknowledged past its expiry', { timeout: 60_000 }, async () => {
  const server = await authServer()
  const tokens = []
  const token = async () => {
    const t = await mintToken({ docs: 'auth/refresh', ttl: '4s', sub: 'carol' })
    tokens.push(t)
    return t
  }
  const client = nodeClient(server, 'carol', cleanup, { token })
  const c = editor(client, 'auth/refresh', cleanup)
  const seen = record(client, c.provider)
  await waitFor('saved after sync', () => c.provider.status === 'saved')
  const firstExpiry = tokenExpiryMs(tokens[0])
  assert.ok(firstExpiry !== null)

  // Type past the first token's expiry and well into the next ones'.
  let typed = 0
  while (Date.now() < firstExpiry + 4000) {
    c.text.insert(c.text.length, 'x')
    typed += 1
    await waitFor(`ack of edit ${typed}`, () => c.provider.status === 'saved')
    await sleep(250)
  }
  assert.ok(seen.reauthed >= 2, `renewed ${seen.reauthed} times`)
  assert.equal(seen.online, 1, 'one connection all along')
  assert.deepEqual(seen.clientErrors, [])
  assert.deepEqual(seen.providerErrors, [])
  assert.deepEqual(seen.access, [])
  assert.equal(await serverText(server, 'auth/refresh', await token()), 'x'.repeat(typed))
})

test('after TOKEN_EXPIRED, reauth() resubscribes and resends what was typed meanwhile', { timeout: 60_000 }, async () => {
  const server = await authServer()
  const client = nodeClient(server, 'dave', cleanup, { token: await mintToken({ docs: 'auth/expiry', ttl: '2s' }) })
  const d = editor(client, 'auth/expiry', cleanup)
  const seen = record(client, d.provider)
  d.text.insert(0, 'before. ')
  await waitFor('saved', () => d.provider.status === 'saved')
  await waitFor('the expiry', () => d.provider.access === 'expired')
  assert.equal(d.provider.status, 'offline')
  assert.deepEqual(seen.clientErrors, ['TOKEN_EXPIRED'])
  d.text.insert(d.text.length, 'while expired.')
  assert.equal(d.provider.unsavedUpdates, 1)

  const fresh = await mintToken({ docs: 'auth/expiry' })
  assert.equal(client.reauth(fresh), true)
  await waitFor('saved again', () => d.provider.status === 'saved' && d.provider.unsavedUpdates === 0)
  assert.equal(d.provider.access, 'ok')
  assert.equal(seen.online, 1, 'on the same socket')
  assert.equal(await serverText(server, 'auth/expiry', fresh), 'before. while expired.')
})
