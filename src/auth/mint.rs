//! `folio token`: minting a token with the server's secret, for scripts
//! and tests (applications mint their own with any JWT library).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::{Auth, AuthSecret, Claims, Principal, Role};

/// `folio token`: mint a token with the server's secret and print it.
#[derive(Debug, Clone, clap::Args)]
pub struct TokenArgs {
    /// A document the token covers: an id, `prefix/*`, or `*`. Repeat for several.
    #[arg(long = "doc", required = true)]
    pub docs: Vec<String>,

    /// read, write or admin.
    #[arg(long, default_value = "read")]
    pub role: Role,

    /// How long the token is valid: `90s`, `15m`, `1h`, `7d`, …
    #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
    pub ttl: Duration,

    /// The user name: recorded as the author of the holder's edits and presence.
    #[arg(long)]
    pub sub: Option<String>,

    /// The token's id, for revoking it alone (`folio revoke --jti`).
    /// Default: 16 random hex digits. Printed on stderr.
    #[arg(long)]
    pub jti: Option<String>,

    /// The server's secret (the same as `folio serve --auth-secret`).
    #[arg(long, env = "FOLIO_AUTH_SECRET", hide_env_values = true)]
    pub auth_secret: AuthSecret,
}

impl TokenArgs {
    /// Signs the token these arguments describe; returns it with its `jti`.
    ///
    /// # Errors
    /// A short secret, a bad doc pattern, `sub` or `jti`, or a TTL of zero.
    pub fn mint(&self) -> Result<(String, String), String> {
        let auth = Auth::with_secret(&self.auth_secret).map_err(|e| e.to_string())?;
        if self.ttl.is_zero() {
            return Err("--ttl must be more than zero".into());
        }
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_err(|e| e.to_string())?;
        let jti = match &self.jti {
            Some(jti) => jti.clone(),
            None => random_jti()?,
        };
        let claims = Claims {
            docs: self.docs.clone(),
            role: self.role,
            exp: (now + self.ttl).as_secs(),
            sub: self.sub.clone(),
            jti: Some(jti.clone()),
            iat: Some(now.as_secs()),
        };
        // Refuse what the server would refuse, before anyone uses it.
        Principal::from_claims(claims.clone()).map_err(|e| e.to_string())?;
        let token = auth.mint(&claims).map_err(|e| e.to_string())?;
        Ok((token, jti))
    }
}

/// 16 hex digits from the system's secure random source (through ring,
/// which the TLS and token code already use).
fn random_jti() -> Result<String, String> {
    use ring::rand::SecureRandom as _;
    let mut bytes = [0u8; 8];
    ring::rand::SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| "no random source for --jti; give one".to_owned())?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}
