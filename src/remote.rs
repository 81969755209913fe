//! The subcommands that talk to a running server over its HTTP API, where
//! the offline ones ([`crate::cli`]) cannot: the server holds the data dir
//! exclusively. Today: `folio revoke` (`POST /admin/revocations`).
//!
//! Plain `http://` only, one HTTP/1.1 request per command. Point `--url` at
//! the server's loopback address, or at a TLS-terminating proxy's plain side;
//! a server started with `--tls-cert` is not reachable from here.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::header::{AUTHORIZATION, CONTENT_TYPE, HOST};
use hyper::{Method, Request, Uri};
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};

/// Longest wait for the whole request, connect to last byte.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// Largest answer read, in bytes: the admin answers are small JSON.
const MAX_RESPONSE_BYTES: usize = 1024 * 1024;

/// Why a remote command failed.
#[derive(Debug, thiserror::Error)]
pub enum RemoteError {
    #[error("{0}")]
    Usage(String),
    #[error("could not reach {url}: {detail}")]
    Unreachable { url: String, detail: String },
    #[error("the server refused ({status} {code}): {message}")]
    Refused {
        status: u16,
        code: String,
        message: String,
    },
}

/// Where the server is and how to authenticate to it.
#[derive(Debug, Clone, clap::Args)]
pub struct ServerArgs {
    /// The server's base URL (`http://host:port`).
    #[arg(long, env = "FOLIO_URL", default_value = "http://127.0.0.1:4700")]
    pub url: String,

    /// An admin token over `*` (`folio token --doc '*' --role admin`).
    #[arg(long, env = "FOLIO_ADMIN_TOKEN", hide_env_values = true)]
    pub token: String,
}

/// `folio revoke`: revoke a token by id, or a user's tokens, on a running server.
#[derive(Debug, Clone, clap::Args)]
#[command(group(clap::ArgGroup::new("target").required(true).args(["jti", "sub"])))]
pub struct RevokeArgs {
    #[command(flatten)]
    pub server: ServerArgs,

    /// The token's id (`folio token` prints it on stderr).
    #[arg(long)]
    pub jti: Option<String>,

    /// A user: every token of theirs issued until now (tokens minted
    /// afterwards still work).
    #[arg(long)]
    pub sub: Option<String>,

    /// Let the server forget the revocation after this long (`30d`, …),
    /// e.g. the longest TTL its tokens had. Default: kept until removed.
    #[arg(long, value_parser = humantime::parse_duration)]
    pub forget_after: Option<Duration>,
}

/// Sends the revocation; returns the server's record of it, as one JSON line.
///
/// # Errors
/// A bad URL, an unreachable server, or a refusal (with the server's code).
pub async fn revoke(args: &RevokeArgs) -> Result<String, RemoteError> {
    let mut body = match (&args.jti, &args.sub) {
        (Some(jti), None) => json!({ "jti": jti }),
        (None, Some(sub)) => json!({ "sub": sub }),
        _ => return Err(RemoteError::Usage("give one of --jti and --sub".into())),
    };
    if let Some(after) = args.forget_after {
        let ms = u64::try_from(crate::store::now_ms()).unwrap_or(0);
        let after = u64::try_from(after.as_millis()).unwrap_or(u64::MAX);
        body["forget_after_ms"] = Value::from(ms.saturating_add(after));
    }
    let answer = request(&args.server, Method::POST, "/admin/revocations", &body).await?;
    Ok(format!("{answer}\n"))
}

/// One JSON request to the server: the JSON answer of a 2xx response.
async fn request(
    server: &ServerArgs,
    method: Method,
    path: &str,
    body: &Value,
) -> Result<Value, RemoteError> {
    let base: Uri = server
        .url
        .parse()
        .map_err(|e| RemoteError::Usage(format!("--url {:?}: {e}", server.url)))?;
    if base.scheme_str() != Some("http") {
        return Err(RemoteError::Usage(format!(
            "--url {:?}: only http:// URLs are supported",
            server.url
        )));
    }
    let (Some(host), Some(authority)) = (base.host(), base.authority()) else {
        return Err(RemoteError::Usage(format!(
            "--url {:?}: no host",
            server.url
        )));
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let port = base.port_u16().unwrap_or(80);
    let full_path = format!("{}{path}", base.path().trim_end_matches('/'));
    let unreachable = |detail: String| RemoteError::Unreachable {
        url: server.url.clone(),
        detail,
    };
    let req = Request::builder()
        .method(method)
        .uri(full_path)
        .header(HOST, authority.as_str())
        .header(AUTHORIZATION, format!("Bearer {}", server.token))
        .header(CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(body.to_string())))
        .map_err(|e| RemoteError::Usage(e.to_string()))?;
    let exchange = async {
        let stream = tokio::net::TcpStream::connect((host, port))
            .await
            .map_err(|e| unreachable(e.to_string()))?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| unreachable(e.to_string()))?;
        let driver = tokio::spawn(conn);
        let resp = sender
            .send_request(req)
            .await
            .map_err(|e| unreachable(e.to_string()))?;
        let status = resp.status().as_u16();
        let bytes = Limited::new(resp.into_body(), MAX_RESPONSE_BYTES)
            .collect()
            .await
            .map_err(|e| unreachable(format!("reading the answer: {e}")))?
            .to_bytes();
        driver.abort();
        Ok::<_, RemoteError>((status, bytes))
    };
    let (status, bytes) = tokio::time::timeout(REQUEST_TIMEOUT, exchange)
        .await
        .map_err(|_| unreachable(format!("no answer within {REQUEST_TIMEOUT:?}")))??;
    let answer: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    if (200..300).contains(&status) {
        return Ok(answer);
    }
    let field = |name: &str| {
        answer["error"][name]
            .as_str()
            .map_or_else(|| "?".to_owned(), str::to_owned)
    };
    Err(RemoteError::Refused {
        status,
        code: field("code"),
        message: field("message"),
    })
}
