/**
 * Helpers shared by the pages `folio serve` embeds: the document id in the
 * URL, the access token in `?token=` (sent with every request), REST URLs,
 * refusals as sentences, names and colours, and applying text deltas.
 */

/**
 * The access token the page was opened with (`?token=`), or null. Every
 * page passes it on: to the WebSocket (`Hello`), to REST calls
 * (`Authorization: Bearer`), to EventSource URLs (`?token=`) and to the
 * links to the other pages.
 */
export const pageToken: string | null = new URLSearchParams(location.search).get('token') || null

/** `fetch` with the page's token, if any, as `Authorization: Bearer`. */
export async function apiFetch (url: string, init: RequestInit = {}): Promise<Response> {
  if (pageToken === null) return fetch(url, init)
  const headers = new Headers(init.headers)
  headers.set('authorization', `Bearer ${pageToken}`)
  return fetch(url, { ...init, headers })
}

/** `url` with the page's token, if any, as `?token=` (EventSource cannot set headers; page links keep it). */
export function withToken (url: string): string {
  if (pageToken === null) return url
  return `${url}${url.includes('?') ? '&' : '?'}token=${encodeURIComponent(pageToken)}`
}

/** The document id after `prefix` in the page's path (`/d/team/notes` → `team/notes`). */
export function docFromPath (prefix: string, fallback: string): string {
  const path = location.pathname
  if (!path.startsWith(prefix)) return fallback
  const raw = path.slice(prefix.length).replace(/\/+$/, '')
  try {
    return raw === '' ? fallback : decodeURIComponent(raw)
  } catch {
    return fallback
  }
}

/** The same rule as the server's `DocId::parse` (docs/protocol.md). */
export function validDocId (id: string): boolean {
  if (id.length < 1 || id.length > 128 || !/^[A-Za-z0-9._\-/]+$/.test(id)) return false
  return id.split('/').every((segment) => segment !== '' && segment !== '.' && segment !== '..')
}

/** A page path for a document: `/d/`, `/watch/` or `/replay/` + the id, `/` kept, and the page's `?token=`. */
export function pagePath (page: 'd' | 'watch' | 'replay', doc: string): string {
  return withToken(`/${page}/${doc.split('/').map(encodeURIComponent).join('/')}`)
}

/** A REST URL of a document (one path segment, `/` encoded as `%2F`). */
export function apiPath (doc: string, rest: string): string {
  return `/docs/${encodeURIComponent(doc)}${rest}`
}

/** Sets the links with `data-page` to the given document's pages. */
export function linkPages (doc: string): void {
  for (const a of document.querySelectorAll<HTMLAnchorElement>('a[data-page]')) {
    a.href = pagePath(a.dataset.page as 'd' | 'watch' | 'replay', doc)
  }
  for (const slot of document.querySelectorAll<HTMLElement>('[data-doc-name]')) {
    slot.textContent = doc
  }
}

/** `document.getElementById` that fails loudly when the HTML and code disagree. */
export function byId<T extends HTMLElement = HTMLElement> (id: string): T {
  const found = document.getElementById(id)
  if (found === null) throw new Error(`page is missing #${id}`)
  return found as T
}

/** Colours with enough contrast for white text, picked by name. */
const PALETTE = ['#b3261e', '#1b6e3a', '#0b57d0', '#8a4b08', '#7a3d9a', '#00696f', '#a8326e', '#4d5d00']

/** A stable colour for a name. */
export function colorFor (name: string): string {
  let h = 0
  for (const ch of name) h = (h * 31 + ch.codePointAt(0)!) >>> 0
  return PALETTE[h % PALETTE.length]
}

/** `hh:mm:ss` in local time. */
export function clock (ms: number): string {
  return new Date(ms).toLocaleTimeString([], { hour: '2-digit', minute: '2-digit', second: '2-digit' })
}

/** One operation of a text delta, as the server's SSE streams send them (UTF-16 offsets). */
export type DeltaOp = { retain: number } | { insert: string } | { delete: number }

/** Applies a delta to `text` (JavaScript strings are UTF-16, like the offsets). */
export function applyDelta (text: string, delta: DeltaOp[]): string {
  let out = ''
  let at = 0
  for (const op of delta) {
    if ('retain' in op) {
      out += text.slice(at, at + op.retain)
      at += op.retain
    } else if ('insert' in op) {
      out += op.insert
    } else {
      at += op.delete
    }
  }
  return out + text.slice(at)
}

/** Creates an element with text and attributes. */
export function el<K extends keyof HTMLElementTagNameMap> (
  tag: K,
  text = '',
  attrs: Record<string, string> = {}
): HTMLElementTagNameMap[K] {
  const node = document.createElement(tag)
  if (text !== '') node.textContent = text
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v)
  return node
}

/** A presence entry: a colour dot and a name. */
export function personItem (name: string, color: string, note = ''): HTMLLIElement {
  const li = el('li')
  const dot = el('span', '', { class: 'dot', 'aria-hidden': 'true' })
  dot.style.background = color
  li.append(dot, el('span', name))
  if (note !== '') li.append(el('span', ` ${note}`, { class: 'muted' }))
  return li
}

/** The `{"error": {"code", "message"}}` body of a failed request. */
async function errorBody (resp: Response): Promise<{ code: string, message: string }> {
  try {
    const body = await resp.json() as { error?: { code?: string, message?: string } }
    return { code: body.error?.code ?? '', message: body.error?.message ?? `HTTP ${resp.status}` }
  } catch {
    return { code: '', message: `HTTP ${resp.status}` }
  }
}

/**
 * A failed request as a sentence: access refusals (401, 403) explained in
 * terms of the page's `?token=`, anything else by the server's message.
 */
export async function errorText (resp: Response): Promise<string> {
  const { code, message } = await errorBody(resp)
  if (code === 'token_expired') return 'The token has expired: open the page again with a fresh ?token='
  if (resp.status === 401) {
    return pageToken === null
      ? 'This server needs an access token: open the page with ?token='
      : 'The server did not accept the token in ?token='
  }
  // "the token does not cover document x", "this needs the admin role", "the token is read-only"
  if (code === 'forbidden' || code === 'read_only') return `Not allowed: ${message}`
  return message
}
