// Two y-websocket providers and one Folio-protocol client type into one
// document at the same time and end up with the same text as the server.

import assert from 'node:assert/strict'
import { after, before, test } from 'node:test'

import {
  FolioClient, runCleanup, serverText, sleep, startServer, synced, tempDir, waitFor, yjsClient
} from './support.js'

const cleanup = []
let server

before(async () => {
  server = await startServer(tempDir(cleanup))
  cleanup.push(() => server.stop())
})
after(() => runCleanup(cleanup))

/** A seeded generator, so a failure can be replayed with TEST_SEED. */
function random (seed) {
  let state = seed >>> 0
  return (n) => {
    state = (Math.imul(state, 1664525) + 1013904223) >>> 0
    return state % n
  }
}

test('two y-websocket clients and a Folio client converge while typing concurrently', { timeout: 120_000 }, async () => {
  const seed = Number(process.env.TEST_SEED ?? Date.now() % 1_000_000)
  console.log(`TEST_SEED=${seed}`)
  const rand = random(seed)
  const doc = 'node/mixed-typing'
  const a = yjsClient(server, doc, cleanup)
  const b = yjsClient(server, doc, cleanup)
  await Promise.all([synced(a.provider), synced(b.provider)])
  const folio = await FolioClient.join(server, doc, 'node-folio', cleanup)

  const typists = [['a', a.ydoc, a.text], ['b', b.ydoc, b.text], ['f', folio.ydoc, folio.text]]
  const rounds = 40
  await Promise.all(typists.map(async ([tag, ydoc, text]) => {
    for (let i = 0; i < rounds; i++) {
      ydoc.transact(() => {
        const len = text.length
        if (len > 10 && rand(4) === 0) {
          // Delete a character that is not part of a token: only the
          // separators "." may go, so every token stays checkable.
          const at = text.toString().indexOf('.')
          if (at >= 0) text.delete(at, 1)
        }
        // Insert between tokens (at the start or after a "."), never inside one.
        const str = text.toString()
        const gaps = [0]
        for (let at = 0; at < str.length; at++) if (str[at] === '.') gaps.push(at + 1)
        text.insert(gaps[rand(gaps.length)], `<${tag}${i}>.`)
      })
      await sleep(rand(8))
    }
  }))

  const agreed = await waitFor('all clients and the server to agree', async () => {
    const onServer = await serverText(server, doc)
    const texts = [a.text.toString(), b.text.toString(), folio.text.toString()]
    return texts.every((t) => t === onServer) && onServer
  })
  for (const [tag] of typists) {
    for (let i = 0; i < rounds; i++) {
      assert.ok(agreed.includes(`<${tag}${i}>`), `seed ${seed}: <${tag}${i}> missing from ${agreed}`)
    }
  }
  await folio.acked()
})
