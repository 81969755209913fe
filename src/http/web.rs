//! The pages a browser sees: the CodeMirror demo (`/`, `/d/{doc}`), the
//! watcher (`/watch/{doc}`) and the history player (`/replay/{doc}`), with
//! their scripts and styles under `/assets/`. `web/build.mjs` bundles them
//! into `web/dist/` (committed); they are embedded in the binary, so
//! `folio serve` needs neither Node nor files beside it.
//!
//! Every response carries an `ETag` (a `304` answers a matching
//! `If-None-Match`) and `Cache-Control: no-cache`, so browsers revalidate
//! instead of running a stale bundle after an upgrade. Text assets are
//! gzipped once, on first use, for clients that accept it.

use std::collections::HashMap;
use std::io::Write;
use std::sync::LazyLock;

use axum::extract::Path;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use flate2::write::GzEncoder;
use flate2::Compression;
use rust_embed::RustEmbed;

use super::ApiError;
use crate::doc::DocId;

#[derive(RustEmbed)]
#[folder = "web/dist/"]
struct Dist;

/// Scripts may come only from this server; CodeMirror injects `<style>`
/// elements, hence `'unsafe-inline'` for styles alone.
const CONTENT_SECURITY_POLICY: &str = "default-src 'self'; script-src 'self'; \
    style-src 'self' 'unsafe-inline'; connect-src 'self'; img-src 'self' data:; \
    base-uri 'none'; form-action 'self'; frame-ancestors 'none'";

/// Smaller files are not worth compressing.
const GZIP_MIN_BYTES: usize = 1024;

/// One embedded file, ready to serve.
struct Asset {
    body: Bytes,
    /// The gzip encoding of `body`, for compressible types.
    gzip: Option<Bytes>,
    content_type: HeaderValue,
    etag: HeaderValue,
}

/// Every embedded file by path (`index.html`, `assets/editor.js`, …).
static ASSETS: LazyLock<HashMap<String, Asset>> = LazyLock::new(|| {
    Dist::iter()
        .filter_map(|path| {
            let file = Dist::get(&path)?;
            let mime = file.metadata.mimetype();
            let hash = file.metadata.sha256_hash();
            let etag = format!(
                "\"{}\"",
                hash[..12]
                    .iter()
                    .map(|b| format!("{b:02x}"))
                    .collect::<String>()
            );
            let content_type = if mime.starts_with("text/") || mime.ends_with("javascript") {
                format!("{mime}; charset=utf-8")
            } else {
                mime.to_owned()
            };
            let body = Bytes::from(file.data.into_owned());
            let compressible = content_type.starts_with("text/") || mime.ends_with("javascript");
            let gzip = (compressible && body.len() >= GZIP_MIN_BYTES)
                .then(|| gzip(&body))
                .flatten();
            Some((
                path.into_owned(),
                Asset {
                    body,
                    gzip,
                    content_type: HeaderValue::from_str(&content_type).ok()?,
                    etag: HeaderValue::from_str(&etag).ok()?,
                },
            ))
        })
        .collect()
});

fn gzip(data: &[u8]) -> Option<Bytes> {
    let mut encoder = GzEncoder::new(Vec::new(), Compression::best());
    encoder.write_all(data).ok()?;
    encoder.finish().ok().map(Bytes::from)
}

fn not_found() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such page")
}

/// Serves one embedded file, honouring `If-None-Match` and `Accept-Encoding`.
fn serve(path: &str, headers: &HeaderMap) -> Result<Response, ApiError> {
    let asset = ASSETS.get(path).ok_or_else(not_found)?;
    let mut response = if headers
        .get(header::IF_NONE_MATCH)
        .is_some_and(|v| v.as_bytes() == asset.etag.as_bytes())
    {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        let accepts_gzip = headers
            .get_all(header::ACCEPT_ENCODING)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|coding| {
                let mut parts = coding.split(';');
                let name = parts.next().unwrap_or("").trim();
                // `gzip;q=0` means "not gzip".
                let refused =
                    parts.any(|p| matches!(p.trim(), "q=0" | "q=0.0" | "q=0.00" | "q=0.000"));
                name.eq_ignore_ascii_case("gzip") && !refused
            });
        match (&asset.gzip, accepts_gzip) {
            (Some(gz), true) => {
                let mut r = gz.clone().into_response();
                r.headers_mut()
                    .insert(header::CONTENT_ENCODING, HeaderValue::from_static("gzip"));
                r
            }
            _ => asset.body.clone().into_response(),
        }
    };
    let h = response.headers_mut();
    h.insert(header::CONTENT_TYPE, asset.content_type.clone());
    h.insert(header::ETAG, asset.etag.clone());
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert(header::VARY, HeaderValue::from_static("accept-encoding"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    if path.ends_with(".html") {
        h.insert(
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(CONTENT_SECURITY_POLICY),
        );
        h.insert(
            header::REFERRER_POLICY,
            HeaderValue::from_static("same-origin"),
        );
    }
    Ok(response)
}

/// `GET /`: the editor on the document `welcome`.
pub async fn home(headers: HeaderMap) -> Result<Response, ApiError> {
    serve("index.html", &headers)
}

/// `GET /d/{doc}`: the editor on `doc` (ids may contain `/`).
pub async fn editor(Path(doc): Path<String>, headers: HeaderMap) -> Result<Response, ApiError> {
    DocId::parse(&doc)?;
    serve("index.html", &headers)
}

/// `GET /watch/{doc}`: presence, activity and live text over SSE.
pub async fn watch(Path(doc): Path<String>, headers: HeaderMap) -> Result<Response, ApiError> {
    DocId::parse(&doc)?;
    serve("watch.html", &headers)
}

/// `GET /replay/{doc}`: versions, scrubbing, time-lapse and restore.
pub async fn replay(Path(doc): Path<String>, headers: HeaderMap) -> Result<Response, ApiError> {
    DocId::parse(&doc)?;
    serve("replay.html", &headers)
}

/// `GET /assets/{file}`: the bundled scripts and styles.
pub async fn asset(Path(file): Path<String>, headers: HeaderMap) -> Result<Response, ApiError> {
    serve(&format!("assets/{file}"), &headers)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_page_and_bundle_is_embedded() {
        for path in [
            "index.html",
            "watch.html",
            "replay.html",
            "assets/editor.js",
            "assets/watch.js",
            "assets/replay.js",
            "assets/style.css",
        ] {
            let asset = ASSETS.get(path);
            assert!(asset.is_some_and(|a| !a.body.is_empty()), "{path} missing");
        }
        let html = &ASSETS["index.html"];
        assert_eq!(html.content_type, "text/html; charset=utf-8");
        assert!(ASSETS["assets/editor.js"].gzip.is_some());
    }
}
