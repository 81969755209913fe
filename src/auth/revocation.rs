//! Token revocation: the set of revoked token ids (`jti`) and users (`sub`),
//! kept in memory for the checks and in the store's `revocations` tree so
//! that it survives restarts and crashes.
//!
//! - A `jti` entry refuses the one token with that id.
//! - A `sub` entry refuses every token of that user *issued* (`iat`) in the
//!   second of the revocation or before it, and tokens without `iat`; tokens
//!   minted afterwards work. So "log this user out everywhere" is one call,
//!   and handing out fresh tokens needs no second one.
//!
//! Every change that revokes bumps an epoch on a [`watch`] channel. Each open
//! connection (`/ws`, `/yjs`, an SSE stream) holds a receiver and re-checks
//! its tokens when it changes, so a revocation reaches open sockets at once
//! rather than at their next request. Checks of new tokens go through
//! [`Revocations::revokes`], one hash lookup under a read lock.
//!
//! Bounded: at most [`MAX_REVOCATIONS`] entries; past that new revocations
//! are refused ([`RevokeError::Full`]) until some are removed or forgotten.
//! An entry may carry a time after which it is forgotten (set it to the
//! token's `exp`: by then the token is refused as expired anyway); forgotten
//! entries are ignored by the checks and pruned at the next write and at
//! start-up.

use std::collections::HashMap;
use std::sync::Arc;

use parking_lot::{Mutex, RwLock};
use tokio::sync::watch;

use crate::store::{RevocationStore, StoreError};

/// Most revocations kept at once. Each is a key of at most a few hundred
/// bytes, so the cap bounds the registry at a few tens of MiB.
pub const MAX_REVOCATIONS: usize = 100_000;

/// Longest `sub` accepted, in a token or a revocation, in bytes.
pub const MAX_SUB_BYTES: usize = 128;

/// Longest `jti` accepted, in a token or a revocation, in bytes.
pub const MAX_JTI_BYTES: usize = 128;

/// What a revocation names.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Target {
    /// One token, by its `jti` claim.
    Jti(String),
    /// Every token of a user issued up to the revocation, by `sub`.
    Sub(String),
}

impl Target {
    /// A `jti` target: 1 to [`MAX_JTI_BYTES`] bytes.
    ///
    /// # Errors
    /// [`RevokeError::Invalid`] for an empty or too long id.
    pub fn jti(id: &str) -> Result<Self, RevokeError> {
        check_len("jti", id, MAX_JTI_BYTES).map(|()| Self::Jti(id.to_owned()))
    }

    /// A `sub` target: 1 to [`MAX_SUB_BYTES`] bytes.
    ///
    /// # Errors
    /// [`RevokeError::Invalid`] for an empty or too long name.
    pub fn sub(name: &str) -> Result<Self, RevokeError> {
        check_len("sub", name, MAX_SUB_BYTES).map(|()| Self::Sub(name.to_owned()))
    }

    /// `"jti"` or `"sub"`.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Jti(_) => "jti",
            Self::Sub(_) => "sub",
        }
    }

    /// The id or the user name.
    pub fn value(&self) -> &str {
        match self {
            Self::Jti(v) | Self::Sub(v) => v,
        }
    }

    /// The store key: `jti:<id>` or `sub:<name>`.
    fn key(&self) -> Vec<u8> {
        format!("{}:{}", self.kind(), self.value()).into_bytes()
    }

    fn from_key(key: &[u8]) -> Option<Self> {
        let key = std::str::from_utf8(key).ok()?;
        let (kind, value) = key.split_once(':')?;
        match kind {
            "jti" => Self::jti(value).ok(),
            "sub" => Self::sub(value).ok(),
            _ => None,
        }
    }
}

fn check_len(what: &str, s: &str, max: usize) -> Result<(), RevokeError> {
    if s.is_empty() || s.len() > max {
        return Err(RevokeError::Invalid(format!(
            "{what} must be 1 to {max} bytes"
        )));
    }
    Ok(())
}

/// One revocation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Revocation {
    pub target: Target,
    /// When it was made, in milliseconds since the Unix epoch.
    pub revoked_at_ms: u64,
    /// When it may be forgotten (ms since the epoch); `None`: kept until removed.
    pub forget_after_ms: Option<u64>,
}

impl Revocation {
    /// The stored value: `revoked_at_ms` then `forget_after_ms` (0 for
    /// never), each 8 bytes big-endian.
    fn encode(&self) -> [u8; 16] {
        let mut v = [0; 16];
        v[..8].copy_from_slice(&self.revoked_at_ms.to_be_bytes());
        v[8..].copy_from_slice(&self.forget_after_ms.unwrap_or(0).to_be_bytes());
        v
    }

    fn decode(key: &[u8], value: &[u8]) -> Option<Self> {
        let target = Target::from_key(key)?;
        let (at, forget) = value.split_at_checked(8)?;
        let forget = u64::from_be_bytes(forget.try_into().ok()?);
        Some(Self {
            target,
            revoked_at_ms: u64::from_be_bytes(at.try_into().ok()?),
            forget_after_ms: (forget != 0).then_some(forget),
        })
    }

    fn forgotten(&self, now_ms: u64) -> bool {
        self.forget_after_ms.is_some_and(|t| t <= now_ms)
    }
}

/// Why a revocation (or its removal) was refused.
#[derive(Debug, thiserror::Error)]
pub enum RevokeError {
    #[error("{0}")]
    Invalid(String),
    #[error(
        "the server keeps at most {0} revocations and has that many: remove some \
         (DELETE /admin/revocations), or give new ones a forget_after_ms"
    )]
    Full(usize),
    #[error("no revocation of {0} {1:?}")]
    NotFound(&'static str, String),
    #[error("the server is shutting down")]
    Closed,
    #[error("storage: {0}")]
    Store(#[from] StoreError),
}

#[derive(Default)]
struct Entries {
    jtis: HashMap<String, Revocation>,
    subs: HashMap<String, Revocation>,
}

impl Entries {
    fn len(&self) -> usize {
        self.jtis.len() + self.subs.len()
    }

    fn map(&mut self, target: &Target) -> &mut HashMap<String, Revocation> {
        match target {
            Target::Jti(_) => &mut self.jtis,
            Target::Sub(_) => &mut self.subs,
        }
    }

    fn get(&self, target: &Target) -> Option<&Revocation> {
        match target {
            Target::Jti(j) => self.jtis.get(j),
            Target::Sub(s) => self.subs.get(s),
        }
    }

    fn insert(&mut self, r: Revocation) {
        let key = r.target.value().to_owned();
        self.map(&r.target).insert(key, r);
    }

    fn forgotten(&self, now_ms: u64) -> Vec<Target> {
        self.jtis
            .values()
            .chain(self.subs.values())
            .filter(|r| r.forgotten(now_ms))
            .map(|r| r.target.clone())
            .collect()
    }
}

/// Where writes go.
enum Backing {
    /// Tests and tools: nothing survives the process.
    Memory,
    Durable(Arc<dyn RevocationStore>),
    /// After [`Revocations::close`]: the store is released, writes are refused.
    Closed,
}

/// The revocation registry. See the module docs.
pub struct Revocations {
    entries: RwLock<Entries>,
    /// Serialises writers (cap check, store write, map update), so the cap
    /// holds under concurrent revocations. Only ever locked on a blocking
    /// thread, never across an `.await`; readers never take it.
    backing: Mutex<Backing>,
    epoch: watch::Sender<u64>,
}

impl std::fmt::Debug for Revocations {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Revocations")
            .field("entries", &self.entries.read().len())
            .finish()
    }
}

impl Revocations {
    /// An empty registry that keeps nothing on disk.
    pub fn in_memory() -> Self {
        Self::with(Entries::default(), Backing::Memory)
    }

    fn with(entries: Entries, backing: Backing) -> Self {
        Self {
            entries: RwLock::new(entries),
            backing: Mutex::new(backing),
            epoch: watch::Sender::new(0),
        }
    }

    /// Loads every revocation from `store`, dropping forgotten ones. Blocks.
    ///
    /// # Errors
    /// I/O failures, and a record that does not decode: refusing to start
    /// beats silently un-revoking a token.
    pub fn load(store: Arc<dyn RevocationStore>) -> Result<Self, StoreError> {
        let now = now_ms();
        let mut entries = Entries::default();
        let mut stale = Vec::new();
        for (key, value) in store.revocations()? {
            let r = Revocation::decode(&key, &value).ok_or_else(|| StoreError::Corrupt {
                key: String::from_utf8_lossy(&key).into_owned(),
                detail: "not a revocation record".into(),
            })?;
            if r.forgotten(now) {
                stale.push(key);
            } else {
                entries.insert(r);
            }
        }
        if !stale.is_empty() {
            store.write_revocations(None, &stale)?;
        }
        tracing::info!(revocations = entries.len(), "revocations loaded");
        Ok(Self::with(entries, Backing::Durable(store)))
    }

    /// A receiver whose value changes whenever a token gets revoked.
    pub fn watch(&self) -> watch::Receiver<u64> {
        self.epoch.subscribe()
    }

    /// Whether a token with these claims is revoked: its `jti` is, or its
    /// `sub` is and it was issued (`iat`, seconds) in the second of that
    /// revocation or before, or has no `iat`.
    pub fn revokes(&self, jti: Option<&str>, sub: Option<&str>, issued_at: Option<u64>) -> bool {
        let entries = self.entries.read();
        if entries.len() == 0 {
            return false;
        }
        let now = now_ms();
        if let Some(r) = jti.and_then(|j| entries.jtis.get(j)) {
            if !r.forgotten(now) {
                return true;
            }
        }
        let Some(r) = sub.and_then(|s| entries.subs.get(s)) else {
            return false;
        };
        !r.forgotten(now) && issued_at.is_none_or(|iat| iat.saturating_mul(1000) <= r.revoked_at_ms)
    }

    /// Every revocation in force, ordered by target.
    pub fn list(&self) -> Vec<Revocation> {
        let now = now_ms();
        let entries = self.entries.read();
        let mut all: Vec<Revocation> = entries
            .jtis
            .values()
            .chain(entries.subs.values())
            .filter(|r| !r.forgotten(now))
            .cloned()
            .collect();
        drop(entries);
        all.sort_by(|a, b| a.target.cmp(&b.target));
        all
    }

    /// Revokes `target` now, durably, then wakes every open connection.
    /// Revoking it again moves its time forward (for a `sub`, tokens issued
    /// in between are revoked too). Blocks: call it from a blocking thread.
    ///
    /// # Errors
    /// [`RevokeError::Full`] at [`MAX_REVOCATIONS`]; storage failures (then
    /// nothing changed); [`RevokeError::Closed`] after shutdown.
    pub fn revoke_blocking(
        &self,
        target: Target,
        forget_after_ms: Option<u64>,
    ) -> Result<Revocation, RevokeError> {
        let backing = self.backing.lock();
        let now = now_ms();
        let (stale, present, len) = {
            let entries = self.entries.read();
            let present = entries.get(&target).is_some();
            (entries.forgotten(now), present, entries.len())
        };
        if !present && len - stale.len() >= MAX_REVOCATIONS {
            return Err(RevokeError::Full(MAX_REVOCATIONS));
        }
        let r = Revocation {
            target,
            revoked_at_ms: now,
            forget_after_ms,
        };
        let stale_keys: Vec<Vec<u8>> = stale.iter().map(Target::key).collect();
        match &*backing {
            Backing::Memory => {}
            Backing::Durable(store) => {
                store.write_revocations(Some((&r.target.key(), &r.encode())), &stale_keys)?;
            }
            Backing::Closed => return Err(RevokeError::Closed),
        }
        {
            let mut entries = self.entries.write();
            for t in &stale {
                let key = t.value().to_owned();
                entries.map(t).remove(&key);
            }
            entries.insert(r.clone());
        }
        drop(backing);
        self.epoch.send_modify(|e| *e = e.wrapping_add(1));
        tracing::info!(
            kind = r.target.kind(),
            target = r.target.value(),
            "token revoked"
        );
        Ok(r)
    }

    /// Removes the revocation of `target`: its tokens work again (those
    /// not expired), on new requests and `Reauth`; connections it already
    /// ended stay ended. Blocks.
    ///
    /// # Errors
    /// [`RevokeError::NotFound`]; storage failures; after shutdown.
    pub fn remove_blocking(&self, target: &Target) -> Result<Revocation, RevokeError> {
        let backing = self.backing.lock();
        let key = target.value().to_owned();
        let Some(r) = self.entries.read().get(target).cloned() else {
            return Err(RevokeError::NotFound(target.kind(), key));
        };
        match &*backing {
            Backing::Memory => {}
            Backing::Durable(store) => store.write_revocations(None, &[target.key()])?,
            Backing::Closed => return Err(RevokeError::Closed),
        }
        self.entries.write().map(target).remove(&key);
        tracing::info!(kind = target.kind(), target = %key, "revocation removed");
        Ok(r)
    }

    /// Releases the store (at shutdown, so the data dir's lock goes with
    /// the last document handle). Checks keep working; writes are refused.
    pub fn close(&self) {
        *self.backing.lock() = Backing::Closed;
    }
}

fn now_ms() -> u64 {
    u64::try_from(crate::store::now_ms()).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jti_and_sub_revocations_refuse_the_right_tokens() {
        let r = Revocations::in_memory();
        assert!(!r.revokes(Some("a"), Some("alice"), Some(1)));
        let mut watch = r.watch();
        r.revoke_blocking(Target::jti("a").expect("jti"), None)
            .expect("revoke");
        assert!(watch.has_changed().expect("open"));
        watch.mark_unchanged();
        assert!(r.revokes(Some("a"), None, None));
        assert!(!r.revokes(Some("b"), Some("alice"), None));
        let at = r
            .revoke_blocking(Target::sub("alice").expect("sub"), None)
            .expect("revoke")
            .revoked_at_ms;
        assert!(watch.has_changed().expect("open"));
        // Issued before or in the same second: revoked; after, or another user: not.
        assert!(r.revokes(None, Some("alice"), Some(at / 1000)));
        assert!(r.revokes(None, Some("alice"), None));
        assert!(!r.revokes(None, Some("alice"), Some(at / 1000 + 1)));
        assert!(!r.revokes(None, Some("bob"), None));
        r.remove_blocking(&Target::sub("alice").expect("sub"))
            .expect("remove");
        assert!(!r.revokes(None, Some("alice"), None));
        assert!(matches!(
            r.remove_blocking(&Target::sub("alice").expect("sub")),
            Err(RevokeError::NotFound("sub", _))
        ));
        assert!(Target::jti("").is_err() && Target::sub(&"x".repeat(129)).is_err());
    }

    #[test]
    fn forgotten_entries_are_ignored_and_records_round_trip() {
        let r = Revocations::in_memory();
        r.revoke_blocking(Target::jti("old").expect("jti"), Some(1))
            .expect("revoke");
        assert!(!r.revokes(Some("old"), None, None));
        assert!(r.list().is_empty());
        let rec = Revocation {
            target: Target::Sub("s:x".into()),
            revoked_at_ms: 7,
            forget_after_ms: Some(9),
        };
        assert_eq!(
            Revocation::decode(&rec.target.key(), &rec.encode()),
            Some(rec)
        );
        assert_eq!(Revocation::decode(b"nope:x", &[0; 16]), None);
        assert_eq!(Revocation::decode(b"jti:x", &[0; 3]), None);
    }
}
