/**
 * Folio's client library: {@link FolioClient} (one WebSocket for many
 * documents, reconnection, liveness) and {@link FolioProvider} (a Y.Doc and
 * its awareness bound to one document, with acknowledged saves).
 *
 * @module
 */

export { FolioClient, FolioError, tokenExpiryMs } from './client.js'
export type {
  ConnectionState,
  DocBinding,
  DocMessage,
  FolioClientEvents,
  FolioClientOptions,
  Session,
  TokenSource,
  WebSocketConstructor,
  WebSocketLike
} from './client.js'
export { FolioProvider } from './provider.js'
export type { Access, FolioProviderEvents, FolioProviderOptions, SaveStatus } from './provider.js'
export { ErrorCode } from './gen/folio/v1/folio_pb.js'

/** The root `Y.Text` the server reads as the document's text. */
export const TEXT_NAME = 'content'
