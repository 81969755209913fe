// The pages with access control, in Debian's chromium against the real
// `folio` binary started with --auth-secret: the editor opened with a
// write `?token=` edits and shows Saved; with a read token it shows
// read-only, stops editing, and the server's text is unchanged; the
// watcher passes its token to its streams and explains a refusal.

import assert from 'node:assert/strict'
import { mkdirSync } from 'node:fs'
import path from 'node:path'
import { after, before, test } from 'node:test'

import {
  AUTH_SECRET, launchBrowser, mintToken, runCleanup, screenshotDir, serverText, startServer, tempDir, waitFor
} from '../support.mjs'

const cleanup = []
let server
let browser
const failures = []

before(async () => {
  mkdirSync(screenshotDir, { recursive: true })
  server = await startServer(tempDir(cleanup), { args: ['--auth-secret', AUTH_SECRET] })
  cleanup.push(() => server.stop())
  browser = await launchBrowser(cleanup)
})
after(() => runCleanup(cleanup))

/** A page on `url` in a browser context of its own. */
async function open (name, url) {
  const context = await browser.newContext({ viewport: { width: 1100, height: 720 } })
  cleanup.push(() => context.close())
  await context.addInitScript((n) => window.localStorage.setItem('folio-name', n), name)
  const page = await context.newPage()
  page.on('pageerror', (e) => failures.push(`${name}: ${e.message}`))
  await page.goto(`${server.http}${url}`)
  return page
}

const editorText = (page) => page.evaluate(() => window.folio.view.state.doc.toString())

test('the editor with ?token= saves with a write token and is read-only with a read token', async () => {
  const doc = 'e2e/tokens'
  const write = await mintToken({ docs: doc, role: 'write', sub: 'alice' })
  const alice = await open('Alice', `/d/${doc}?token=${write}`)
  await alice.locator('#saved').filter({ hasText: 'Saved' }).waitFor()
  await alice.locator('.cm-content').click()
  await alice.keyboard.type('Written with a write token.')
  await waitFor('the text in the editor', async () => (await editorText(alice)) === 'Written with a write token.')
  await alice.locator('#saved').filter({ hasText: 'Saved' }).waitFor()
  assert.equal(await serverText(server, doc, write), 'Written with a write token.')
  assert.equal(await alice.locator('#access').isHidden(), true)
  // Links to the other pages keep the token.
  assert.match(await alice.locator('a[data-page="watch"]').getAttribute('href'), /\?token=/)

  const read = await mintToken({ docs: doc, role: 'read', sub: 'bob' })
  const bob = await open('Bob', `/d/${doc}?token=${read}`)
  await waitFor('the text at the reader', async () => (await editorText(bob)) === 'Written with a write token.')
  await bob.locator('.cm-content').click()
  await bob.keyboard.press('Control+End')
  await bob.keyboard.type('!')
  await bob.locator('#access').filter({ hasText: 'Read-only' }).waitFor()
  await bob.locator('#saved').filter({ hasText: 'Not saved' }).waitFor()
  assert.equal(await bob.locator('.cm-content').getAttribute('contenteditable'), 'false')
  const local = await editorText(bob)
  await bob.keyboard.type('more')
  assert.equal(await editorText(bob), local, 'no editing once read-only')
  await bob.screenshot({ path: path.join(screenshotDir, 'editor-read-only.png') })
  assert.equal(await serverText(server, doc, write), 'Written with a write token.')

  // The reader still follows the writer live.
  await alice.keyboard.type(' More.')
  await waitFor('the writer\'s edit at the reader', async () => (await editorText(bob)).includes('More.'))

  // The watcher sends its token to its streams, and explains a missing one.
  const watcher = await open('Watcher', `/watch/${doc}?token=${read}`)
  await watcher.locator('#feed-state').filter({ hasText: 'Live' }).waitFor()
  await waitFor('the text at the watcher', async () =>
    (await watcher.locator('#text').textContent()) === 'Written with a write token. More.')
  const anonymous = await open('Anonymous', `/watch/${doc}`)
  await anonymous.locator('#feed-state').filter({ hasText: 'Refused' }).waitFor()
  assert.match(await anonymous.locator('#text').textContent(), /needs an access token/)
  assert.deepEqual(failures, [])
})
