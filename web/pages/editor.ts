/**
 * The demo served at `/` and `/d/{doc}`: CodeMirror 6 bound to a Folio
 * document through y-codemirror.next, with remote cursors, a presence
 * list, connection and "Saved" status, and a document picker. With
 * `?token=` it connects with that access token; a read-only token or a
 * refusal shows in the access badge and stops editing.
 */

import { defaultKeymap, history, historyKeymap } from '@codemirror/commands'
import { Compartment, EditorState } from '@codemirror/state'
import { EditorView, drawSelection, keymap, placeholder } from '@codemirror/view'
import { yCollab } from 'y-codemirror.next'
import * as Y from 'yjs'

import { ErrorCode, FolioClient, FolioProvider, TEXT_NAME } from '../src/index.js'
import type { Access, ConnectionState, SaveStatus } from '../src/index.js'
import { apiFetch, byId, colorFor, docFromPath, linkPages, pagePath, pageToken, personItem, validDocId, el } from './common.js'

/** The document `/` opens. */
const DEFAULT_DOC = 'welcome'

const doc = docFromPath('/d/', DEFAULT_DOC)
document.title = `${doc} · Folio`
linkPages(doc)

// Who we are: remembered per browser, editable.
const nameInput = byId<HTMLInputElement>('name-input')
const storedName = safeStorage()?.getItem('folio-name')
let name = storedName !== null && storedName !== undefined && storedName.trim() !== ''
  ? storedName
  : `Guest ${Math.floor(100 + Math.random() * 900)}`
nameInput.value = name

const wsUrl = `${location.protocol === 'https:' ? 'wss:' : 'ws:'}//${location.host}/ws`
const client = new FolioClient(wsUrl, { name, token: pageToken ?? undefined })
const ydoc = new Y.Doc()
const provider = new FolioProvider(client, doc, ydoc)
const awareness = provider.awareness
setUser(name)

const ytext = ydoc.getText(TEXT_NAME)
const undoManager = new Y.UndoManager(ytext)
/** Editing is switched off while the server refuses this page's edits. */
const editable = new Compartment()
const view = new EditorView({
  parent: byId('editor'),
  state: EditorState.create({
    doc: ytext.toString(),
    extensions: [
      history(),
      drawSelection(),
      keymap.of([...defaultKeymap, ...historyKeymap]),
      EditorView.lineWrapping,
      editable.of(EditorView.editable.of(true)),
      placeholder('Start typing. Everyone on this document sees it live.'),
      EditorView.contentAttributes.of({ 'aria-label': `Text of ${doc}`, 'aria-multiline': 'true' }),
      yCollab(ytext, awareness, { undoManager }),
      EditorView.theme({
        // Remote carets always show their owner's name, not only on hover.
        '.cm-ySelectionInfo': { opacity: '1', fontFamily: 'inherit', top: '-1.3em' },
        '&.cm-focused': { outline: '2px solid #0b57d0' }
      })
    ]
  })
})
// Tests and curious users can reach the parts from the console.
Object.assign(window, { folio: { client, provider, ydoc, view } })

// --- name and presence
nameInput.addEventListener('change', () => {
  const next = nameInput.value.trim()
  if (next === '' || next === name) return
  name = next
  safeStorage()?.setItem('folio-name', name)
  setUser(name)
})

function setUser (who: string): void {
  const color = colorFor(who)
  awareness.setLocalStateField('user', { name: who, color, colorLight: `${color}33` })
}

const presenceList = byId<HTMLUListElement>('presence')
function renderPresence (): void {
  const items: HTMLLIElement[] = []
  for (const [id, state] of awareness.getStates()) {
    const user = (state as { user?: { name?: string, color?: string } }).user
    if (user === undefined) continue
    const label = typeof user.name === 'string' ? user.name : 'Anonymous'
    const color = typeof user.color === 'string' ? user.color : '#555'
    items.push(personItem(label, color, id === ydoc.clientID ? '(you)' : ''))
  }
  presenceList.replaceChildren(...items)
}
awareness.on('change', renderPresence)
renderPresence()

// --- status
const connectionBadge = byId('connection')
const CONNECTION_TEXT: Record<ConnectionState, string> = {
  connecting: 'Connecting…',
  online: 'Online',
  offline: 'Offline: retrying',
  refused: 'Refused: the server did not accept the token',
  closed: 'Closed'
}
function renderConnection (state: ConnectionState): void {
  connectionBadge.textContent = CONNECTION_TEXT[state]
  connectionBadge.dataset.state = state
}
client.on('state', renderConnection)
renderConnection(client.state)

const savedBadge = byId('saved')
const changes = (n: number): string => `${n} change${n === 1 ? '' : 's'}`
/** Why the server refuses this page, in the "Saved" badge. */
const REFUSED_TEXT: Record<Exclude<Access, 'ok' | 'read-only'>, string> = {
  expired: 'Not saved: the token has expired; open the page again with a fresh ?token=',
  unauthorized: pageToken === null
    ? 'Not saved: this server needs an access token; open the page with ?token='
    : 'Not saved: the server did not accept the token',
  forbidden: 'Not saved: the token does not give access to this document',
  'not-found': 'No such document: this token may read it but not create it'
}
function renderSaved (status: SaveStatus): void {
  const unsaved = provider.unsavedUpdates
  if (provider.deleted) return
  const access = provider.access
  savedBadge.dataset.state = status === 'read-only' ? 'error' : status
  if (access !== 'ok' && access !== 'read-only') {
    savedBadge.dataset.state = 'error'
    savedBadge.textContent = REFUSED_TEXT[access]
    return
  }
  savedBadge.textContent = status === 'saved'
    ? 'Saved'
    : status === 'saving'
      ? 'Saving…'
      : status === 'read-only'
        ? `Not saved: ${changes(unsaved)} kept in this page only`
        : unsaved > 0 ? `Offline: ${unsaved} unsaved change${unsaved === 1 ? '' : 's'}` : 'Offline'
}
provider.on('status', ({ status }) => renderSaved(status))
provider.on('error', (error) => {
  if (error.code === ErrorCode.DOC_DELETED) {
    savedBadge.dataset.state = 'offline'
    savedBadge.textContent = 'This document was deleted'
    view.dispatch({ effects: editable.reconfigure(EditorView.editable.of(false)) })
  }
})
ydoc.on('afterTransaction', () => renderSaved(provider.status))
renderSaved(provider.status)

// --- access: a read-only badge, and no editing while refused
const accessBadge = byId('access')
const ACCESS_TEXT: Record<Access, string> = {
  ok: '',
  'read-only': 'Read-only',
  expired: 'Token expired',
  unauthorized: 'No access',
  forbidden: 'No access',
  'not-found': 'Not found'
}
function renderAccess (access: Access): void {
  accessBadge.hidden = access === 'ok'
  accessBadge.textContent = ACCESS_TEXT[access]
  accessBadge.dataset.state = access === 'read-only' ? 'readonly' : 'error'
  accessBadge.title = access === 'read-only' ? 'This token may read this document but not change it' : ''
  view.dispatch({ effects: editable.reconfigure(EditorView.editable.of(access === 'ok')) })
  renderSaved(provider.status)
}
provider.on('access', ({ access }) => renderAccess(access))

window.addEventListener('beforeunload', (e) => {
  if (provider.unsavedUpdates > 0) e.preventDefault()
})

// --- document picker
const picker = byId<HTMLFormElement>('picker')
const docInput = byId<HTMLInputElement>('doc-input')
docInput.value = doc
picker.addEventListener('submit', (e) => {
  e.preventDefault()
  const wanted = docInput.value.trim()
  if (!validDocId(wanted)) {
    docInput.setCustomValidity('1 to 128 of A-Z a-z 0-9 . _ - and /, no empty, . or .. segment')
    docInput.reportValidity()
    return
  }
  location.assign(pagePath('d', wanted))
})
docInput.addEventListener('input', () => docInput.setCustomValidity(''))

// Existing documents as suggestions (the list may be long: the first 200).
void apiFetch('/docs').then(async (resp) => {
  if (!resp.ok) return
  const body = await resp.json() as Array<{ id: string }> | { docs: Array<{ id: string }> }
  const docs = Array.isArray(body) ? body : body.docs
  byId('doc-list').replaceChildren(...docs.slice(0, 200).map((d) => el('option', '', { value: d.id })))
}).catch(() => {})

view.focus()

function safeStorage (): Storage | undefined {
  try {
    return window.localStorage
  } catch {
    return undefined
  }
}
