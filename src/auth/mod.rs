//! Access control: signed tokens, what they allow, and how HTTP carries them.
//!
//! A token is an HS256 JWT signed with the server's `--auth-secret`. Its
//! claims ([`Claims`]) name the documents it covers (`docs`: exact ids, or
//! prefixes such as `team-a/*`, or `*` for every document), a [`Role`] and an
//! expiry (`exp`), and optionally the user (`sub`). A verified token is a
//! [`Principal`]; [`Principal::can`] answers whether it may do an [`Action`]
//! on a document. Without a secret the server runs open: every request is
//! [`Principal::open`], which may do anything.
//!
//! Tokens are verified once, where they arrive (a WebSocket `Hello`,
//! `Subscribe` or `Reauth`, an HTTP request, a `/yjs` upgrade); the sockets
//! then keep the principal and a timer for its expiry, so no per-message
//! check costs more than comparing a role. Revocation (by `jti` or `sub`,
//! see [`crate::auth::revocation`]) is checked at verification too, and open
//! sockets re-check their principals when [`Auth::revocations`] changes.
//!
//! For HTTP handlers, [`Principal`] is an axum extractor (`Authorization:
//! Bearer <token>` or `?token=<token>`; 401 when missing or invalid), and
//! [`Principal::require`] turns a refusal into a 403:
//!
//! ```
//! use axum::extract::Path;
//! use folio::auth::{Action, Principal};
//! use folio::doc::DocId;
//! use folio::http::ApiError;
//!
//! /// `DELETE /docs/{id}`: admins only.
//! async fn delete(principal: Principal, Path(id): Path<String>) -> Result<(), ApiError> {
//!     let doc = DocId::parse(&id)?;
//!     principal.require(Action::Admin, &doc)?;
//!     // … delete it …
//!     Ok(())
//! }
//! # let _ = delete;
//! ```

use std::fmt;
use std::net::SocketAddr;
use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::extract::Query;
use axum::http::{header, HeaderMap, Uri};
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

use crate::doc::DocId;
use crate::protocol::ErrorCode;
pub use revocation::{Revocation, Revocations, RevokeError, Target};
pub use revocation::{MAX_JTI_BYTES, MAX_SUB_BYTES};

pub mod mint;
pub mod revocation;

/// Shortest accepted `--auth-secret`, in bytes: HS256 wants a key at least
/// as long as its 256-bit hash.
pub const MIN_SECRET_BYTES: usize = 32;

/// Most `docs` patterns one token may carry: each check walks them.
pub const MAX_DOC_PATTERNS: usize = 256;

/// What a token lets its holder do. Ordered: each role includes the ones before.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Subscribe, receive updates, send presence; read over HTTP and SSE.
    Read,
    /// Also send updates.
    Write,
    /// Also the admin-only operations (see [`Action::Admin`]).
    Admin,
}

impl FromStr for Role {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "read" => Ok(Self::Read),
            "write" => Ok(Self::Write),
            "admin" => Ok(Self::Admin),
            other => Err(format!("unknown role {other:?}: use read, write or admin")),
        }
    }
}

/// Something a principal may or may not do on a document.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Subscribe, receive updates, send awareness; `GET` text, state, events.
    Read,
    /// Send updates (`Update`, y-websocket sync step 2 and updates, `POST update`).
    Write,
    /// Delete, restore, import; with [`Principal::can_all`], the all-documents feed.
    Admin,
}

impl Action {
    fn needs(self) -> Role {
        match self {
            Self::Read => Role::Read,
            Self::Write => Role::Write,
            Self::Admin => Role::Admin,
        }
    }
}

/// One entry of a token's `docs` claim.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DocPattern {
    /// `*`: every document.
    Any,
    /// `team-a/*`: every id starting with `team-a/` (kept with its `/`).
    Prefix(String),
    /// An exact document id.
    Exact(DocId),
}

impl DocPattern {
    /// Parses `*`, `<id>/*` or `<id>`, where `<id>` follows the doc id rule.
    ///
    /// # Errors
    /// A pattern with `*` elsewhere, or whose id part is not a valid id.
    pub fn parse(s: &str) -> Result<Self, String> {
        if s == "*" {
            return Ok(Self::Any);
        }
        if let Some(prefix) = s.strip_suffix("/*") {
            DocId::parse(prefix).map_err(|e| format!("doc pattern {s:?}: {e}"))?;
            return Ok(Self::Prefix(format!("{prefix}/")));
        }
        DocId::parse(s)
            .map(Self::Exact)
            .map_err(|e| format!("doc pattern {s:?}: {e} (patterns are `id`, `prefix/*` or `*`)"))
    }

    /// Whether `doc` matches.
    pub fn matches(&self, doc: &DocId) -> bool {
        match self {
            Self::Any => true,
            Self::Prefix(prefix) => doc.as_str().starts_with(prefix.as_str()),
            Self::Exact(id) => id == doc,
        }
    }
}

/// The claims of a Folio token, as signed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// Exact ids, `prefix/*` patterns, or `*`.
    pub docs: Vec<String>,
    pub role: Role,
    /// Expiry, in seconds since the Unix epoch.
    pub exp: u64,
    /// The user: when present, recorded as the author of this holder's
    /// updates and presence instead of any name the client gives.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sub: Option<String>,
    /// The token's id, for revoking this one token (`POST /admin/revocations`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jti: Option<String>,
    /// When it was issued, in seconds since the Unix epoch. A revocation of
    /// its `sub` refuses it only if it was issued in that second or before;
    /// a token without `iat` counts as issued before any revocation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iat: Option<u64>,
}

/// Who is asking, and what they may do: a verified token, or anyone in open mode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    role: Role,
    docs: Vec<DocPattern>,
    sub: Option<String>,
    /// The `jti` claim, if any.
    jti: Option<String>,
    /// The `iat` claim (seconds since the epoch), if any.
    issued_at: Option<u64>,
    /// `None` in open mode: never expires.
    expires_at: Option<SystemTime>,
}

impl Principal {
    /// Open dev mode (no secret): may do everything, forever, as nobody in particular.
    pub fn open() -> Self {
        Self {
            role: Role::Admin,
            docs: vec![DocPattern::Any],
            sub: None,
            jti: None,
            issued_at: None,
            expires_at: None,
        }
    }

    /// Checks claims that decoded and passed the signature and expiry check.
    fn from_claims(claims: Claims) -> Result<Self, AuthError> {
        if claims.docs.len() > MAX_DOC_PATTERNS {
            return Err(AuthError::Invalid(format!(
                "a token may name at most {MAX_DOC_PATTERNS} doc patterns"
            )));
        }
        let docs = claims
            .docs
            .iter()
            .map(|p| DocPattern::parse(p))
            .collect::<Result<Vec<_>, _>>()
            .map_err(AuthError::Invalid)?;
        if let Some(sub) = &claims.sub {
            if sub.is_empty() || sub.len() > MAX_SUB_BYTES {
                return Err(AuthError::Invalid(format!(
                    "sub must be 1 to {MAX_SUB_BYTES} bytes"
                )));
            }
        }
        if let Some(jti) = &claims.jti {
            if jti.is_empty() || jti.len() > MAX_JTI_BYTES {
                return Err(AuthError::Invalid(format!(
                    "jti must be 1 to {MAX_JTI_BYTES} bytes"
                )));
            }
        }
        let expires_at = UNIX_EPOCH
            .checked_add(Duration::from_secs(claims.exp))
            .ok_or_else(|| AuthError::Invalid("exp is out of range".into()))?;
        Ok(Self {
            role: claims.role,
            docs,
            sub: claims.sub,
            jti: claims.jti,
            issued_at: claims.iat,
            expires_at: Some(expires_at),
        })
    }

    /// Whether this principal may do `action` on `doc`: the token covers
    /// `doc` and its role includes the action.
    pub fn can(&self, action: Action, doc: &DocId) -> bool {
        self.role >= action.needs() && self.covers(doc)
    }

    /// Whether this principal may do `action` on every document, present
    /// and future: the role includes it and the token names `*`. The
    /// all-documents feed asks for `can_all(Action::Admin)`.
    pub fn can_all(&self, action: Action) -> bool {
        self.role >= action.needs() && self.docs.contains(&DocPattern::Any)
    }

    /// [`Principal::can`] as a `Result`, for handlers (`?` makes it a 403).
    ///
    /// # Errors
    /// [`Denied::NotCovered`] when the token does not name `doc`,
    /// [`Denied::ReadOnly`] for a write with a read token, and
    /// [`Denied::AdminOnly`] for an admin action without the admin role.
    pub fn require(&self, action: Action, doc: &DocId) -> Result<(), Denied> {
        if !self.covers(doc) {
            return Err(Denied::NotCovered(doc.clone()));
        }
        self.require_role(action)
    }

    /// [`Principal::can_all`] as a `Result`.
    ///
    /// # Errors
    /// [`Denied::AdminOnly`] (or [`Denied::ReadOnly`] for a write) when the
    /// role falls short, [`Denied::NotAll`] when the token does not name `*`.
    pub fn require_all(&self, action: Action) -> Result<(), Denied> {
        self.require_role(action)?;
        if self.docs.contains(&DocPattern::Any) {
            Ok(())
        } else {
            Err(Denied::NotAll)
        }
    }

    fn require_role(&self, action: Action) -> Result<(), Denied> {
        if self.role >= action.needs() {
            return Ok(());
        }
        Err(match action {
            Action::Write => Denied::ReadOnly,
            Action::Admin | Action::Read => Denied::AdminOnly,
        })
    }

    /// Whether the token's `docs` name `doc`, whatever the role.
    pub fn covers(&self, doc: &DocId) -> bool {
        self.docs.iter().any(|p| p.matches(doc))
    }

    /// The role.
    pub fn role(&self) -> Role {
        self.role
    }

    /// The user the token names, if any. Authorship goes to this name.
    pub fn sub(&self) -> Option<&str> {
        self.sub.as_deref()
    }

    /// The token's id (`jti`), if it has one.
    pub fn jti(&self) -> Option<&str> {
        self.jti.as_deref()
    }

    /// When the token expires; `None` in open mode.
    pub fn expires_at(&self) -> Option<SystemTime> {
        self.expires_at
    }

    /// [`Principal::expires_at`] in milliseconds since the epoch, 0 for never.
    pub fn expires_at_ms(&self) -> u64 {
        self.expires_at
            .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
    }

    /// Time left before expiry (zero once expired); `None` for never.
    pub fn remaining(&self) -> Option<Duration> {
        self.expires_at.map(|at| {
            at.duration_since(SystemTime::now())
                .unwrap_or(Duration::ZERO)
        })
    }
}

/// Why a valid principal may not do something.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Denied {
    #[error("the token does not cover document {0}")]
    NotCovered(DocId),
    #[error("the token does not cover every document (`*`)")]
    NotAll,
    #[error("the token is read-only")]
    ReadOnly,
    #[error("this needs the admin role")]
    AdminOnly,
}

impl Denied {
    /// The wire error code.
    pub fn code(&self) -> ErrorCode {
        match self {
            Self::ReadOnly => ErrorCode::ReadOnly,
            Self::NotCovered(_) | Self::NotAll | Self::AdminOnly => ErrorCode::Forbidden,
        }
    }
}

/// Why a token was not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("a token is required (Authorization: Bearer, ?token=, or in Hello/Subscribe)")]
    Missing,
    #[error("invalid token: {0}")]
    Invalid(String),
    #[error("the token has expired")]
    Expired,
    #[error("the token has been revoked")]
    Revoked,
}

impl AuthError {
    /// The wire error code.
    pub fn code(&self) -> ErrorCode {
        match self {
            Self::Missing | Self::Invalid(_) => ErrorCode::Unauthorized,
            Self::Expired => ErrorCode::TokenExpired,
            Self::Revoked => ErrorCode::TokenRevoked,
        }
    }
}

/// Why the server refuses to start with the auth settings given.
#[derive(Debug, thiserror::Error)]
pub enum AuthSetupError {
    #[error("--auth-secret must be at least {MIN_SECRET_BYTES} bytes (HS256); generate one with `openssl rand -hex 32`")]
    ShortSecret,
    #[error(
        "refusing to serve {0} without --auth-secret: anyone who can reach it could read and \
         write every document. Set --auth-secret (FOLIO_AUTH_SECRET), bind a loopback address, \
         or pass --insecure-open to run open on purpose"
    )]
    OpenOnPublicAddress(SocketAddr),
}

/// The HS256 secret. Its `Debug` never shows it, so configs can be logged.
#[derive(Clone, PartialEq, Eq)]
pub struct AuthSecret(String);

impl AuthSecret {
    /// The secret's bytes.
    pub fn as_bytes(&self) -> &[u8] {
        self.0.as_bytes()
    }
}

impl FromStr for AuthSecret {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(Self(s.to_owned()))
    }
}

impl fmt::Debug for AuthSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("AuthSecret(<redacted>)")
    }
}

struct Keys {
    encoding: EncodingKey,
    decoding: DecodingKey,
    validation: Validation,
}

/// The server's token authority: verifies (and, for `folio token` and
/// tests, mints) tokens, or lets everyone in when there is no secret.
pub struct Auth {
    keys: Option<Keys>,
    revocations: Arc<Revocations>,
}

impl fmt::Debug for Auth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Auth")
            .field("open", &self.is_open())
            .finish()
    }
}

impl Auth {
    /// Open dev mode: no tokens, everyone may do everything.
    pub fn open() -> Self {
        Self {
            keys: None,
            revocations: Arc::new(Revocations::in_memory()),
        }
    }

    /// The same authority, checking `revocations` (the server's, loaded
    /// from the store) instead of its own empty in-memory set.
    #[must_use]
    pub fn with_revocations(mut self, revocations: Arc<Revocations>) -> Self {
        self.revocations = revocations;
        self
    }

    /// The revoked tokens; its [`Revocations::watch`] wakes open connections.
    pub fn revocations(&self) -> &Arc<Revocations> {
        &self.revocations
    }

    /// Whether `principal`, verified earlier, has been revoked since.
    pub fn is_revoked(&self, principal: &Principal) -> bool {
        self.revocations
            .revokes(principal.jti(), principal.sub(), principal.issued_at)
    }

    /// Tokens signed with `secret` are required.
    ///
    /// # Errors
    /// [`AuthSetupError::ShortSecret`] under [`MIN_SECRET_BYTES`].
    pub fn with_secret(secret: &AuthSecret) -> Result<Self, AuthSetupError> {
        let bytes = secret.as_bytes();
        if bytes.len() < MIN_SECRET_BYTES {
            return Err(AuthSetupError::ShortSecret);
        }
        let mut validation = Validation::new(Algorithm::HS256);
        // Expiry is exact: the sockets' timers fire at `exp`, so the check
        // at verification must agree with them.
        validation.leeway = 0;
        validation.validate_aud = false;
        validation.set_required_spec_claims(&["exp"]);
        Ok(Self {
            keys: Some(Keys {
                encoding: EncodingKey::from_secret(bytes),
                decoding: DecodingKey::from_secret(bytes),
                validation,
            }),
            revocations: Arc::new(Revocations::in_memory()),
        })
    }

    /// The authority for a server bound to `bound`: tokens when a secret is
    /// set, otherwise open mode with a loud warning, and only on a loopback
    /// address unless `insecure_open`.
    ///
    /// # Errors
    /// A short secret, or no secret on a non-loopback address without
    /// `insecure_open`.
    pub fn for_server(
        secret: Option<&AuthSecret>,
        insecure_open: bool,
        bound: SocketAddr,
    ) -> Result<Self, AuthSetupError> {
        if let Some(secret) = secret {
            return Self::with_secret(secret);
        }
        if !bound.ip().is_loopback() && !insecure_open {
            return Err(AuthSetupError::OpenOnPublicAddress(bound));
        }
        tracing::warn!(
            addr = %bound,
            "OPEN DEV MODE: no --auth-secret, so there is NO ACCESS CONTROL: anyone who can \
             reach this address can read, write and watch every document. Set --auth-secret \
             (FOLIO_AUTH_SECRET) for anything but local development; see SECURITY.md"
        );
        Ok(Self::open())
    }

    /// Whether the server runs without access control.
    pub fn is_open(&self) -> bool {
        self.keys.is_none()
    }

    /// Checks a token's signature, expiry and claims.
    ///
    /// # Errors
    /// [`AuthError::Missing`] for an empty token, [`AuthError::Expired`],
    /// [`AuthError::Revoked`], or [`AuthError::Invalid`] with the reason. In open mode every token,
    /// even an empty one, gives [`Principal::open`].
    pub fn verify(&self, token: &str) -> Result<Principal, AuthError> {
        let Some(keys) = &self.keys else {
            return Ok(Principal::open());
        };
        if token.is_empty() {
            return Err(AuthError::Missing);
        }
        let data = jsonwebtoken::decode::<Claims>(token, &keys.decoding, &keys.validation)
            .map_err(|e| match e.kind() {
                ErrorKind::ExpiredSignature => AuthError::Expired,
                _ => AuthError::Invalid(e.to_string()),
            })?;
        // jsonwebtoken accepts `exp == now`; the sockets' timers count that
        // second as expired, so refuse it here too.
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        if data.claims.exp <= now {
            return Err(AuthError::Expired);
        }
        let principal = Principal::from_claims(data.claims)?;
        if self.is_revoked(&principal) {
            return Err(AuthError::Revoked);
        }
        Ok(principal)
    }

    /// Signs `claims` (`folio token`, tests).
    ///
    /// # Errors
    /// In open mode there is no key; a claim that does not serialize.
    pub fn mint(&self, claims: &Claims) -> Result<String, AuthError> {
        let keys = self
            .keys
            .as_ref()
            .ok_or_else(|| AuthError::Invalid("no --auth-secret to sign with".into()))?;
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), claims, &keys.encoding)
            .map_err(|e| AuthError::Invalid(e.to_string()))
    }

    /// The principal of an HTTP request: its `Authorization: Bearer`
    /// header, else its `?token=` query parameter.
    ///
    /// # Errors
    /// As [`Auth::verify`]; [`AuthError::Missing`] without either.
    pub fn from_http(&self, headers: &HeaderMap, uri: &Uri) -> Result<Principal, AuthError> {
        if self.is_open() {
            return Ok(Principal::open());
        }
        let token = bearer(headers)
            .or_else(|| {
                Query::<TokenQuery>::try_from_uri(uri)
                    .ok()
                    .and_then(|q| q.0.token)
            })
            .unwrap_or_default();
        self.verify(&token)
    }
}

#[derive(Deserialize)]
struct TokenQuery {
    token: Option<String>,
}

fn bearer(headers: &HeaderMap) -> Option<String> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim().to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secret() -> AuthSecret {
        AuthSecret("0123456789abcdef0123456789abcdef".into())
    }

    fn claims(docs: &[&str], role: Role, ttl_secs: i64) -> Claims {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .expect("clock after 1970")
            .as_secs();
        Claims {
            docs: docs.iter().map(|s| (*s).to_owned()).collect(),
            role,
            exp: now.saturating_add_signed(ttl_secs),
            sub: Some("alice".into()),
            jti: None,
            iat: None,
        }
    }

    fn doc(s: &str) -> DocId {
        DocId::parse(s).expect("valid id")
    }

    #[test]
    fn patterns_cover_exact_ids_prefixes_and_everything() {
        let auth = Auth::with_secret(&secret()).expect("secret");
        let token = auth
            .mint(&claims(&["notes", "team-a/*"], Role::Write, 60))
            .expect("mint");
        let p = auth.verify(&token).expect("verifies");
        assert!(p.can(Action::Write, &doc("notes")));
        assert!(p.can(Action::Read, &doc("team-a/x/y.md")));
        assert!(!p.can(Action::Read, &doc("team-a")));
        assert!(!p.can(Action::Read, &doc("team-ab/x")));
        assert!(!p.can(Action::Read, &doc("notes2")));
        assert!(!p.can(Action::Admin, &doc("notes")));
        assert!(!p.can_all(Action::Read));
        assert_eq!(p.sub(), Some("alice"));
        let all = auth
            .verify(&auth.mint(&claims(&["*"], Role::Admin, 60)).expect("mint"))
            .expect("verifies");
        assert!(all.can_all(Action::Admin));
        assert!(all.can(Action::Write, &doc("anything/at/all")));
    }

    #[test]
    fn roles_map_to_the_right_refusals() {
        let auth = Auth::with_secret(&secret()).expect("secret");
        let p = auth
            .verify(&auth.mint(&claims(&["a"], Role::Read, 60)).expect("mint"))
            .expect("verifies");
        assert_eq!(p.require(Action::Read, &doc("a")), Ok(()));
        assert_eq!(p.require(Action::Write, &doc("a")), Err(Denied::ReadOnly));
        assert_eq!(p.require(Action::Admin, &doc("a")), Err(Denied::AdminOnly));
        assert_eq!(
            p.require(Action::Read, &doc("b")),
            Err(Denied::NotCovered(doc("b")))
        );
        assert_eq!(p.require_all(Action::Read), Err(Denied::NotAll));
    }

    #[test]
    fn bad_tokens_are_refused_with_the_reason() {
        let auth = Auth::with_secret(&secret()).expect("secret");
        assert_eq!(auth.verify(""), Err(AuthError::Missing));
        assert!(matches!(
            auth.verify("not.a.jwt"),
            Err(AuthError::Invalid(_))
        ));
        let expired = auth.mint(&claims(&["a"], Role::Write, -5)).expect("mint");
        assert_eq!(auth.verify(&expired), Err(AuthError::Expired));
        let other = Auth::with_secret(&AuthSecret("x".repeat(40))).expect("secret");
        let forged = other.mint(&claims(&["a"], Role::Admin, 60)).expect("mint");
        assert!(matches!(auth.verify(&forged), Err(AuthError::Invalid(_))));
        // An absurd expiry is refused, never an arithmetic panic.
        let mut far = claims(&["a"], Role::Read, 60);
        far.exp = u64::MAX;
        let far = auth.mint(&far).expect("mint");
        assert!(matches!(auth.verify(&far), Err(AuthError::Invalid(_))));
        let bad_pattern = auth
            .mint(&claims(&["team-*"], Role::Read, 60))
            .expect("mint");
        assert!(matches!(
            auth.verify(&bad_pattern),
            Err(AuthError::Invalid(_))
        ));
        // A token signed with "none" or another algorithm is not accepted.
        let header = Header::new(Algorithm::HS384);
        let hs384 = jsonwebtoken::encode(
            &header,
            &claims(&["a"], Role::Admin, 60),
            &EncodingKey::from_secret(secret().as_bytes()),
        )
        .expect("encode");
        assert!(matches!(auth.verify(&hs384), Err(AuthError::Invalid(_))));
    }

    #[test]
    fn open_mode_lets_everyone_in_and_refuses_public_addresses() {
        let public: SocketAddr = "0.0.0.0:4700".parse().expect("addr");
        let local: SocketAddr = "127.0.0.1:4700".parse().expect("addr");
        assert!(matches!(
            Auth::for_server(None, false, public),
            Err(AuthSetupError::OpenOnPublicAddress(_))
        ));
        assert!(Auth::for_server(None, true, public)
            .expect("insecure open")
            .is_open());
        let open = Auth::for_server(None, false, local).expect("loopback");
        assert_eq!(open.verify(""), Ok(Principal::open()));
        assert!(matches!(
            Auth::with_secret(&AuthSecret("short".into())),
            Err(AuthSetupError::ShortSecret)
        ));
        assert!(!format!("{:?}", secret()).contains("0123"));
    }
}
