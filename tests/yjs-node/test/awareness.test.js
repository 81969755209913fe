// Presence crosses between y-websocket providers and Folio-protocol clients
// in both directions, reaches late joiners, and goes when a client leaves.

import assert from 'node:assert/strict'
import { after, before, test } from 'node:test'

import { FolioClient, runCleanup, startServer, synced, tempDir, waitFor, yjsClient } from './support.js'

const cleanup = []
let server

before(async () => {
  server = await startServer(tempDir(cleanup))
  cleanup.push(() => server.stop())
})
after(() => runCleanup(cleanup))

const nameOf = (awareness, clientID) => awareness.getStates().get(clientID)?.user?.name

test('awareness crosses between the protocols', { timeout: 60_000 }, async () => {
  const doc = 'node-presence'
  const y = yjsClient(server, doc, cleanup)
  y.awareness.setLocalStateField('user', { name: 'yjs-alice', color: '#30bced' })
  await synced(y.provider)
  const folio = await FolioClient.join(server, doc, 'node-folio', cleanup)
  folio.awareness.setLocalStateField('user', { name: 'folio-bob' })

  // Folio -> y-websocket, and y-websocket -> Folio (the provider's presence
  // was already in the shard when Folio subscribed).
  await waitFor('the provider to see folio-bob', () =>
    nameOf(y.awareness, folio.ydoc.clientID) === 'folio-bob')
  await waitFor('folio to see yjs-alice', () =>
    nameOf(folio.awareness, y.ydoc.clientID) === 'yjs-alice')

  // Live changes, both ways.
  y.awareness.setLocalStateField('user', { name: 'yjs-alice-2' })
  folio.awareness.setLocalStateField('cursor', { anchor: 1, head: 1 })
  await waitFor('folio to see the new name', () =>
    nameOf(folio.awareness, y.ydoc.clientID) === 'yjs-alice-2')
  await waitFor('the provider to see the cursor', () =>
    y.awareness.getStates().get(folio.ydoc.clientID)?.cursor?.head === 1)

  // A late y-websocket joiner gets everyone's presence on join.
  const late = yjsClient(server, doc, cleanup)
  await synced(late.provider)
  await waitFor('the late joiner to see both', () =>
    nameOf(late.awareness, y.ydoc.clientID) === 'yjs-alice-2' &&
    nameOf(late.awareness, folio.ydoc.clientID) === 'folio-bob')

  // A provider that leaves takes its presence with it, for both protocols,
  // and only its own: the provider relays every presence it hears, others'
  // included, and the server must not count those as the leaver's.
  assert.ok(y.awareness.getStates().has(folio.ydoc.clientID))
  y.provider.disconnect()
  await waitFor('folio to see alice leave', () => !folio.awareness.getStates().has(y.ydoc.clientID))
  await waitFor('the late joiner to see alice leave', () => !late.awareness.getStates().has(y.ydoc.clientID))
  // Once the server has let alice go, anything it sends the late joiner
  // comes after whatever it said about her leaving.
  await waitFor('the server to count two subscribers', async () => {
    const { docs } = await (await fetch(`${server.http}/docs`)).json()
    return docs.find((d) => d.id === doc)?.subscribers === 2
  })
  folio.text.insert(0, 'marker')
  await waitFor('the marker to reach the late joiner', () => late.text.toString().includes('marker'))
  assert.equal(nameOf(late.awareness, folio.ydoc.clientID), 'folio-bob')
  assert.equal(nameOf(y.awareness, folio.ydoc.clientID), undefined, 'the provider forgets others once disconnected')
})
