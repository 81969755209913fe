//! The embedded browser pages: every route serves its page from the binary,
//! assets are gzipped on request and revalidated by ETag, and bad paths get
//! the JSON errors of the rest of the API.

use crate::support::TestServer;

/// GET with optional request headers; status, headers and raw body bytes.
async fn get(
    server: &TestServer,
    path: &str,
    headers: &[(&str, &str)],
) -> (u16, reqwest::header::HeaderMap, bytes::Bytes) {
    // No automatic decompression: the test looks at the bytes on the wire.
    let mut req = reqwest::Client::new().get(server.url(path));
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = req.send().await.expect("http get");
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    (status, headers, resp.bytes().await.expect("body"))
}

#[tokio::test]
async fn pages_and_assets_are_served_from_the_binary() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = TestServer::start(dir.path()).await;

    for (path, script) in [
        ("/", "/assets/editor.js"),
        ("/d/team-a/notes.md", "/assets/editor.js"),
        ("/watch/notes", "/assets/watch.js"),
        ("/replay/team-a/notes.md", "/assets/replay.js"),
    ] {
        let (status, headers, body) = get(&server, path, &[]).await;
        assert_eq!(status, 200, "{path}");
        assert_eq!(headers["content-type"], "text/html; charset=utf-8");
        assert!(headers.contains_key("content-security-policy"));
        let html = String::from_utf8(body.to_vec()).expect("utf-8 html");
        assert!(html.contains(script), "{path} loads {script}");
    }

    // The editor bundle: gzipped when asked, the same bytes as in web/dist.
    let (status, headers, plain) = get(&server, "/assets/editor.js", &[]).await;
    assert_eq!(status, 200);
    assert!(headers.get("content-encoding").is_none());
    assert_eq!(
        &plain[..],
        &std::fs::read("web/dist/assets/editor.js").expect("dist")[..]
    );
    let (_, gz_headers, gz) = get(
        &server,
        "/assets/editor.js",
        &[("accept-encoding", "br, gzip")],
    )
    .await;
    assert_eq!(gz_headers["content-encoding"], "gzip");
    assert!(gz.len() < plain.len() / 2);
    let mut unzipped = Vec::new();
    std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(&gz[..]), &mut unzipped)
        .expect("valid gzip");
    assert_eq!(unzipped, plain);

    // Revalidation: a matching ETag gets 304 and no body.
    let etag = headers["etag"].to_str().expect("etag").to_owned();
    let (status, _, body) = get(&server, "/assets/editor.js", &[("if-none-match", &etag)]).await;
    assert_eq!((status, body.len()), (304, 0));

    // Bad paths: the API's JSON errors.
    let (status, _, body) = get(&server, "/d/a//b", &[]).await;
    assert_eq!(status, 400);
    assert!(String::from_utf8_lossy(&body).contains("invalid_doc_id"));
    let (status, _, body) = get(&server, "/assets/nope.js", &[]).await;
    assert_eq!(status, 404);
    assert!(String::from_utf8_lossy(&body).contains("not_found"));
}
