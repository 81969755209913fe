/**
 * The watcher page `/watch/{doc}`: presence and an activity timeline from
 * `GET /docs/{id}/events`, and the text, read-only and live, from
 * `GET /docs/{id}/text/stream`. Server-Sent Events only, no WebSocket.
 * The page's `?token=` goes to both streams (and to the request that
 * explains a refusal).
 */

import {
  apiFetch, apiPath, applyDelta, byId, clock, colorFor, docFromPath, el, errorText, linkPages, personItem, withToken
} from './common.js'
import type { DeltaOp } from './common.js'

/** Timeline entries kept on the page; older ones are dropped. */
const MAX_TIMELINE = 200

interface User { client: number, author: string, name: string | null, color: string | null, cursor: number | null }

const doc = docFromPath('/watch/', 'welcome')
document.title = `Watching ${doc} · Folio`
linkPages(doc)

const feedState = byId('feed-state')
const textView = byId('text')
const textLen = byId('text-len')
const presenceList = byId<HTMLUListElement>('presence')
const nobody = byId('nobody')
const timeline = byId<HTMLOListElement>('activity')
const present = new Map<number, User>()

function setState (label: string, state: string): void {
  feedState.textContent = label
  feedState.dataset.state = state
}

function renderPresence (): void {
  presenceList.replaceChildren(...[...present.values()].map((u) => {
    const shown = u.name ?? u.author
    const note = u.cursor !== null ? `at ${u.cursor}` : ''
    return personItem(shown, u.color ?? colorFor(shown), note)
  }))
  nobody.hidden = present.size > 0
}

function addEntry (text: string, who?: string): void {
  const li = el('li')
  li.append(el('time', clock(Date.now())), ' ')
  if (who !== undefined) {
    const dot = el('span', '', { class: 'dot', 'aria-hidden': 'true' })
    dot.style.background = colorFor(who)
    li.append(dot, el('strong', who), ' ')
  }
  li.append(text)
  timeline.prepend(li)
  while (timeline.children.length > MAX_TIMELINE) timeline.lastElementChild?.remove()
}

const parse = (ev: MessageEvent): Record<string, unknown> => JSON.parse(ev.data as string) as Record<string, unknown>

// --- presence and activity
const events = new EventSource(withToken(apiPath(doc, '/events')))
events.onopen = () => setState('Live', 'online')
events.onerror = () => {
  if (events.readyState === EventSource.CLOSED) void explainClosed()
  else setState('Reconnecting…', 'offline')
}
events.addEventListener('reset', (ev) => {
  const data = parse(ev) as { presence: User[], text_len: number }
  present.clear()
  for (const u of data.presence) present.set(u.client, u)
  renderPresence()
})
events.addEventListener('presence', (ev) => {
  const { action, user } = parse(ev) as { action: string, user: User }
  if (action === 'left') present.delete(user.client)
  else present.set(user.client, user)
  renderPresence()
  if (action !== 'changed') addEntry(action === 'joined' ? 'joined' : 'left', user.name ?? user.author)
})
events.addEventListener('activity', (ev) => {
  const a = parse(ev) as { author: string, inserted: number, deleted: number, updates: number, from: number | null }
  const parts = []
  if (a.inserted > 0) parts.push(`inserted ${a.inserted}`)
  if (a.deleted > 0) parts.push(`deleted ${a.deleted}`)
  const where = a.from !== null ? ` at ${a.from}` : ''
  addEntry(`${parts.join(', ') || 'edited'} character${a.inserted + a.deleted === 1 ? '' : 's'}${where} (${a.updates} update${a.updates === 1 ? '' : 's'})`, a.author)
})
events.addEventListener('saved', (ev) => {
  const { seq } = parse(ev) as { seq: number }
  addEntry(`snapshot saved at update ${seq}`)
})
events.addEventListener('doc', (ev) => {
  const { action } = parse(ev) as { action: string }
  addEntry(`document ${action}`)
})

// --- the text
let text = ''
const stream = new EventSource(withToken(apiPath(doc, '/text/stream')))
function showText (): void {
  textView.textContent = text
  textLen.textContent = `${text.length} character${text.length === 1 ? '' : 's'}`
}
stream.addEventListener('text', (ev) => {
  text = (parse(ev) as { text: string }).text
  showText()
})
stream.addEventListener('delta', (ev) => {
  text = applyDelta(text, JSON.parse(ev.data as string) as DeltaOp[])
  showText()
})
stream.onerror = () => {
  if (stream.readyState === EventSource.CLOSED) void explainClosed()
}

/** EventSource gives up on an HTTP error (a refused token, say): say why. */
async function explainClosed (): Promise<void> {
  const resp = await apiFetch(apiPath(doc, '/text')).catch(() => null)
  if (resp?.status === 404) {
    setState('No such document', 'missing')
    textView.textContent = 'This document does not exist yet. Open it in the editor to create it.'
  } else if (resp?.status === 401 || resp?.status === 403) {
    setState('Refused', 'error')
    textView.textContent = await errorText(resp)
  } else {
    setState('Disconnected', 'offline')
  }
}
