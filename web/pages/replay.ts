/**
 * The replay page `/replay/{doc}`: the document's versions, a slider that
 * scrubs through every point of its history (`GET /docs/{id}/at?seq=`), a
 * play button that replays it as a time-lapse (`GET /docs/{id}/replay`,
 * Server-Sent Events), and a restore button (`POST /docs/{id}/restore`).
 * Every request carries the page's `?token=` (restoring needs an admin
 * token, saving a version a write token).
 */

import { apiFetch, apiPath, applyDelta, byId, clock, docFromPath, el, errorText, linkPages, withToken } from './common.js'
import type { DeltaOp } from './common.js'

interface Version {
  id: number
  seq: number
  time_ms: number
  text_len: number
  authors: string[]
  label: string | null
  kind: string
}

const doc = docFromPath('/replay/', 'welcome')
document.title = `History of ${doc} · Folio`
linkPages(doc)

const slider = byId<HTMLInputElement>('slider')
const position = byId<HTMLOutputElement>('position')
const textView = byId('text')
const state = byId('replay-state')
const playButton = byId<HTMLButtonElement>('play')
const speed = byId<HTMLSelectElement>('speed')
const restoreButton = byId<HTMLButtonElement>('restore')
const versionList = byId<HTMLOListElement>('versions')
const noVersions = byId('no-versions')

let versions: Version[] = []
let latestSeq = 0
let shownSeq = -1
let shownTime: number | null = null
let player: EventSource | null = null
let scrubTimer: ReturnType<typeof setTimeout> | null = null
let scrubToken = 0

function say (text: string, kind = 'info'): void {
  state.textContent = text
  state.dataset.state = kind
}

function versionAt (seq: number): Version | undefined {
  return versions.find((v) => v.seq === seq)
}

function describe (v: Version): string {
  const what = v.label ?? v.kind
  const who = v.authors.length > 0 ? ` by ${v.authors.join(', ')}` : ''
  return `#${v.id} · ${clock(v.time_ms)} · ${what}${who} · ${v.text_len} chars`
}

function renderPosition (): void {
  const seq = Number(slider.value)
  const at = versionAt(seq)
  const when = shownTime !== null && shownSeq === seq ? ` · ${clock(shownTime)}` : ''
  position.textContent = `update ${seq} of ${latestSeq}${when}${at !== undefined ? ` · version #${at.id}` : ''}`
  restoreButton.disabled = at === undefined || player !== null || seq === latestSeq
  restoreButton.textContent = at !== undefined ? `Restore version #${at.id}` : 'Restore this version'
  for (const button of versionList.querySelectorAll<HTMLButtonElement>('button')) {
    button.setAttribute('aria-pressed', String(Number(button.dataset.seq) === seq))
  }
}

function renderVersions (): void {
  versionList.replaceChildren(...versions.slice().reverse().map((v) => {
    const button = el('button', describe(v), { type: 'button', 'data-seq': String(v.seq) })
    button.addEventListener('click', () => {
      stop()
      slider.value = String(v.seq)
      void show(v.seq)
    })
    const li = el('li')
    li.append(button)
    return li
  }))
  noVersions.hidden = versions.length > 0
  renderPosition()
}

async function loadVersions (): Promise<boolean> {
  const resp = await apiFetch(apiPath(doc, '/versions'))
  if (!resp.ok) {
    say(resp.status === 404 ? 'No such document' : await errorText(resp), 'error')
    return false
  }
  const body = await resp.json() as { latest_seq: number, versions: Version[] }
  versions = body.versions
  latestSeq = body.latest_seq
  slider.max = String(latestSeq)
  renderVersions()
  return true
}

/** Shows the text at `seq` (the latest point at or before it). */
async function show (seq: number): Promise<void> {
  const token = ++scrubToken
  renderPosition()
  const resp = await apiFetch(apiPath(doc, `/at?seq=${seq}`))
  if (token !== scrubToken) return // a later scrub won
  if (!resp.ok) {
    say(await errorText(resp), 'error')
    return
  }
  const at = await resp.json() as { seq: number, time_ms: number | null, text: string }
  shownSeq = seq
  shownTime = at.time_ms
  textView.textContent = at.text
  say(seq === latestSeq ? 'Latest' : 'Past', seq === latestSeq ? 'online' : 'past')
  renderPosition()
}

/** Forgets a scrub still waiting or loading, so it cannot overwrite what replaced it. */
function cancelScrub (): void {
  if (scrubTimer !== null) clearTimeout(scrubTimer)
  scrubTimer = null
  scrubToken++
}

slider.addEventListener('input', () => {
  stop()
  renderPosition()
  if (scrubTimer !== null) clearTimeout(scrubTimer)
  scrubTimer = setTimeout(() => void show(Number(slider.value)), 60)
})

// --- play: a time-lapse from the slider's position to the latest update
function stop (): void {
  if (player === null) return
  player.close()
  player = null
  playButton.textContent = 'Play'
  playButton.setAttribute('aria-pressed', 'false')
  renderPosition()
}

playButton.addEventListener('click', () => {
  if (player !== null) {
    stop()
    say('Paused', 'past')
    return
  }
  cancelScrub()
  let from = Number(slider.value)
  if (from >= latestSeq) from = 0
  let text = ''
  const source = new EventSource(withToken(apiPath(doc, `/replay?from=${from}&to=${latestSeq}&speed=${speed.value}`)))
  player = source
  playButton.textContent = 'Pause'
  playButton.setAttribute('aria-pressed', 'true')
  say('Playing…', 'online')
  renderPosition()
  source.addEventListener('start', (ev) => {
    const start = JSON.parse(ev.data as string) as { seq: number, text: string, time_ms: number | null }
    text = start.text
    textView.textContent = text
    slider.value = String(start.seq)
    shownSeq = start.seq
    shownTime = start.time_ms
    renderPosition()
  })
  source.addEventListener('delta', (ev) => {
    const d = JSON.parse(ev.data as string) as { seq: number, time_ms: number, delta: DeltaOp[] }
    text = applyDelta(text, d.delta)
    textView.textContent = text
    slider.value = String(d.seq)
    shownSeq = d.seq
    shownTime = d.time_ms
    renderPosition()
  })
  source.addEventListener('end', () => {
    stop()
    say('Played to the end', 'online')
  })
  source.onerror = () => {
    // The stream ended or failed; EventSource would start it again.
    if (player === source) {
      stop()
      void show(Number(slider.value))
    }
  }
})

// --- restore and labelled versions
restoreButton.addEventListener('click', async () => {
  const v = versionAt(Number(slider.value))
  if (v === undefined) return
  cancelScrub()
  restoreButton.disabled = true
  const resp = await apiFetch(apiPath(doc, '/restore'), {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ version: v.id })
  })
  if (!resp.ok) {
    say(`Restore failed: ${await errorText(resp)}`, 'error')
    renderPosition()
    return
  }
  const restored = await resp.json() as { doc_seq: number }
  await loadVersions()
  slider.value = String(latestSeq)
  await show(latestSeq)
  say(`Restored version #${v.id} (now update ${restored.doc_seq})`, 'online')
})

byId<HTMLFormElement>('label-form').addEventListener('submit', async (e) => {
  e.preventDefault()
  const input = byId<HTMLInputElement>('label-input')
  const resp = await apiFetch(apiPath(doc, '/versions'), {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ label: input.value })
  })
  if (!resp.ok) {
    say(`Could not save a version: ${await errorText(resp)}`, 'error')
    return
  }
  input.value = ''
  await loadVersions()
  say('Version saved', 'online')
})

// New edits move the end of the slider (and keep it at the end if it was).
const events = new EventSource(withToken(apiPath(doc, '/events')))
events.addEventListener('activity', (ev) => {
  const { last_seq: last } = JSON.parse(ev.data as string) as { last_seq: number }
  if (last <= latestSeq) return
  const atEnd = Number(slider.value) === latestSeq && player === null
  latestSeq = last
  slider.max = String(latestSeq)
  if (atEnd) {
    slider.value = String(latestSeq)
    void show(latestSeq)
  }
  renderPosition()
})
events.onerror = () => {
  if (events.readyState === EventSource.CLOSED) events.close()
}

void (async () => {
  if (!await loadVersions()) return
  slider.value = String(latestSeq)
  await show(latestSeq)
})()
