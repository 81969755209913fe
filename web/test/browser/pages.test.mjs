// The pages `folio serve` embeds, in Debian's chromium driven by
// playwright-core, against the real `folio` binary: concurrent typing,
// remote cursors, going offline and back, the watcher page and the replay
// page. Screenshots go to web/test-output/ (not committed).

import assert from 'node:assert/strict'
import { mkdirSync } from 'node:fs'
import path from 'node:path'
import { after, before, test } from 'node:test'

import {
  launchBrowser, runCleanup, screenshotDir, serverText, startServer, tempDir, waitFor
} from '../support.mjs'

const cleanup = []
let server
let browser
const failures = []

before(async () => {
  mkdirSync(screenshotDir, { recursive: true })
  server = await startServer(tempDir(cleanup))
  cleanup.push(() => server.stop())
  browser = await launchBrowser(cleanup)
})
after(() => runCleanup(cleanup))

/** A browser context for one person (own storage), with a page on `url`. */
async function person (name, url, viewport = { width: 1100, height: 720 }) {
  const context = await browser.newContext({ viewport })
  cleanup.push(() => context.close())
  await context.addInitScript((n) => window.localStorage.setItem('folio-name', n), name)
  const page = await context.newPage()
  page.on('pageerror', (e) => failures.push(`${name}: ${e.message}`))
  await page.goto(`${server.http}${url}`)
  return { context, page }
}

/** The editor's text as CodeMirror holds it. */
const editorText = (page) => page.evaluate(() => window.folio.view.state.doc.toString())
const badge = (page, id) => page.locator(`#${id}`).textContent()

async function openEditor (name, doc) {
  const p = await person(name, `/d/${doc}`)
  await p.page.locator('#saved').filter({ hasText: 'Saved' }).waitFor()
  return p
}

test('two pages type into one document at the same time and converge, showing each other\'s cursor', async () => {
  const doc = 'e2e/converge'
  const alice = await openEditor('Alice', doc)
  const bob = await openEditor('Bob', doc)
  await alice.page.locator('.cm-content').click()
  await bob.page.locator('.cm-content').click()
  await Promise.all([
    alice.page.keyboard.type('alice was here. ', { delay: 15 }),
    bob.page.keyboard.type('BOB TYPED THIS. ', { delay: 15 })
  ])
  await waitFor('both pages to converge', async () => {
    const [a, b] = await Promise.all([editorText(alice.page), editorText(bob.page)])
    return a === b && a.length === 32 && a
  })
  const text = await editorText(alice.page)
  // Each person's keystrokes stay in order, whatever the interleaving.
  assert.equal(text.replace(/[^a-z]/g, ''), 'alicewashere')
  assert.equal(text.replace(/[^A-Z]/g, ''), 'BOBTYPEDTHIS')
  await alice.page.locator('#saved').filter({ hasText: 'Saved' }).waitFor()
  await bob.page.locator('#saved').filter({ hasText: 'Saved' }).waitFor()
  assert.equal(await serverText(server, doc), text)

  // Alice sees Bob's caret with his name, and both in the presence list.
  await alice.page.locator('.cm-ySelectionInfo', { hasText: 'Bob' }).waitFor({ state: 'visible' })
  await bob.page.locator('.cm-ySelectionInfo', { hasText: 'Alice' }).waitFor({ state: 'visible' })
  await alice.page.locator('#presence li', { hasText: 'Bob' }).waitFor()
  await alice.page.locator('#presence li', { hasText: 'Alice (you)' }).waitFor()
  await alice.page.screenshot({ path: path.join(screenshotDir, 'editor.png') })
  assert.deepEqual(failures, [])
})

test('a page that goes offline keeps its edits and converges when it comes back', async () => {
  const doc = 'e2e/offline'
  const alice = await openEditor('Alice', doc)
  const bob = await openEditor('Bob', doc)
  await alice.page.locator('.cm-content').click()
  await alice.page.keyboard.type('shared start. ')
  await waitFor('Bob to see it', async () => (await editorText(bob.page)) === 'shared start. ')

  await alice.context.setOffline(true)
  await alice.page.locator('#connection').filter({ hasText: 'Offline' }).waitFor()
  await alice.page.keyboard.press('End')
  await alice.page.keyboard.type('written offline.')
  await alice.page.locator('#saved').filter({ hasText: 'unsaved change' }).waitFor()
  await bob.page.locator('.cm-content').click()
  await bob.page.keyboard.press('Control+Home')
  await bob.page.keyboard.type('Bob meanwhile: ')
  await bob.page.locator('#saved').filter({ hasText: 'Saved' }).waitFor()
  assert.equal(await serverText(server, doc), 'Bob meanwhile: shared start. ')
  assert.equal(await editorText(alice.page), 'shared start. written offline.')

  await alice.context.setOffline(false)
  const expected = 'Bob meanwhile: shared start. written offline.'
  await waitFor('both pages to converge', async () =>
    (await editorText(alice.page)) === expected && (await editorText(bob.page)) === expected)
  await alice.page.locator('#saved').filter({ hasText: 'Saved' }).waitFor()
  assert.equal(await badge(alice.page, 'connection'), 'Online')
  assert.equal(await serverText(server, doc), expected)
  assert.deepEqual(failures, [])
})

test('the watcher page shows presence, activity and the live text', async () => {
  const doc = 'e2e/watched'
  const alice = await openEditor('Alice', doc)
  await alice.page.locator('.cm-content').click()
  await alice.page.keyboard.type('Hello, watchers.')
  await alice.page.locator('#saved').filter({ hasText: 'Saved' }).waitFor()

  const watcher = await person('Watcher', `/watch/${doc}`)
  const w = watcher.page
  await w.locator('#feed-state').filter({ hasText: 'Live' }).waitFor()
  await w.locator('#presence li', { hasText: 'Alice' }).waitFor()
  await waitFor('the text', async () => (await w.locator('#text').textContent()) === 'Hello, watchers.')

  const bob = await openEditor('Bob', doc)
  await w.locator('#presence li', { hasText: 'Bob' }).waitFor()
  await w.locator('#activity li', { hasText: /Bob.*joined/ }).waitFor()
  await bob.page.locator('.cm-content').click()
  await bob.page.keyboard.press('Control+End')
  await bob.page.keyboard.type(' Bob too.')
  // Activity is coalesced per author per window: a slow typist may show
  // up as several entries, which together insert the 9 characters.
  await waitFor("Bob's activity to add up to 9 insertions", async () => {
    const entries = await w.locator('#activity li').allTextContents()
    const inserted = entries
      .map(t => /bob.*inserted (\d+)/i.exec(t))
      .filter(Boolean)
      .reduce((sum, m) => sum + Number(m[1]), 0)
    return inserted === 9
  })
  await waitFor('the live text', async () =>
    (await w.locator('#text').textContent()) === 'Hello, watchers. Bob too.')
  await w.screenshot({ path: path.join(screenshotDir, 'watch.png') })

  await bob.context.close()
  await w.locator('#activity li', { hasText: /Bob.*left/ }).waitFor()
  assert.equal(await w.locator('#presence li', { hasText: 'Bob' }).count(), 0)
  assert.deepEqual(failures, [])
})

test('the replay page scrubs to an old version and restores it', async () => {
  const doc = 'e2e/history'
  const alice = await openEditor('Alice', doc)
  await alice.page.locator('.cm-content').click()
  await alice.page.keyboard.type('First draft.')
  await alice.page.locator('#saved').filter({ hasText: 'Saved' }).waitFor()
  const resp = await fetch(`${server.http}/docs/${encodeURIComponent(doc)}/versions`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ label: 'first draft' })
  })
  assert.equal(resp.status, 201)
  const version = await resp.json()
  await alice.page.keyboard.press('Control+a')
  await alice.page.keyboard.type('Second draft, rewritten.')
  await alice.page.locator('#saved').filter({ hasText: 'Saved' }).waitFor()

  const replay = await person('Reader', `/replay/${doc}`)
  const r = replay.page
  await waitFor('the latest text', async () => (await r.locator('#text').textContent()) === 'Second draft, rewritten.')

  // Scrub with the keyboard: Home is the empty document before any update.
  await r.locator('#slider').focus()
  await r.keyboard.press('Home')
  await waitFor('the empty start', async () => (await r.locator('#text').textContent()) === '')
  // The labelled version, from the list.
  await r.locator('#versions button', { hasText: 'first draft' }).click()
  await waitFor('the old version', async () => (await r.locator('#text').textContent()) === 'First draft.')
  assert.equal(await r.locator('#slider').inputValue(), String(version.seq))
  await r.screenshot({ path: path.join(screenshotDir, 'replay.png') })

  await r.locator('#restore').click()
  await r.locator('#replay-state').filter({ hasText: 'Restored' }).waitFor()
  // Live for the editor, and on the server.
  await waitFor('the editor to show the restored text', async () => (await editorText(alice.page)) === 'First draft.')
  assert.equal(await serverText(server, doc), 'First draft.')
  await waitFor('the replay page at the new latest', async () => (await r.locator('#text').textContent()) === 'First draft.')

  // Play from the start replays the whole history to the restored text.
  await r.locator('#speed').selectOption('0')
  await r.locator('#slider').focus()
  await r.keyboard.press('Home')
  await r.locator('#play').click()
  await r.locator('#replay-state').filter({ hasText: 'Played to the end' }).waitFor()
  assert.equal(await r.locator('#text').textContent(), 'First draft.')
  assert.deepEqual(failures, [])
})

test('every page is usable at phone width and labels its controls', async () => {
  for (const url of ['/d/e2e/phone', '/watch/e2e/phone', '/replay/e2e/phone']) {
    const { page } = await person('Phone', url, { width: 375, height: 740 })
    await page.waitForLoadState('load')
    const report = await page.evaluate(() => {
      const unlabelled = [...document.querySelectorAll('input, select, textarea, [contenteditable="true"]')]
        .filter((e) => (e.labels?.length ?? 0) === 0 && !e.getAttribute('aria-label'))
        .map((e) => e.id || e.className)
      return { overflow: document.documentElement.scrollWidth - window.innerWidth, unlabelled }
    })
    assert.deepEqual(report, { overflow: 0, unlabelled: [] }, url)
  }
})
