//! [`DocId`]: a document id that has been checked once, at the edge.

use std::fmt;
use std::sync::Arc;

/// Longest accepted document id, in bytes.
pub const MAX_DOC_ID_BYTES: usize = 128;

/// A valid document id: 1 to 128 characters of `[A-Za-z0-9._-]` and `/`, not
/// starting or ending with `/`, with no `//`, and not `.` or `..` as a path
/// segment. The rule keeps ids safe as URL path segments, as file names for
/// export, and as sled key prefixes (no NUL byte can occur, so `id 0x00 seq`
/// keys never collide).
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DocId(Arc<str>);

/// Why a string is not a [`DocId`].
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DocIdError {
    #[error("doc id is empty")]
    Empty,
    #[error("doc id is longer than {MAX_DOC_ID_BYTES} bytes")]
    TooLong,
    #[error("doc id contains {0:?}; allowed are A-Z a-z 0-9 . _ - and /")]
    BadChar(char),
    #[error("doc id has an empty, '.' or '..' path segment")]
    BadSegment,
}

impl DocId {
    /// Checks `s` against the rule above.
    ///
    /// # Errors
    /// [`DocIdError`] naming the first rule broken.
    pub fn parse(s: &str) -> Result<Self, DocIdError> {
        if s.is_empty() {
            return Err(DocIdError::Empty);
        }
        if s.len() > MAX_DOC_ID_BYTES {
            return Err(DocIdError::TooLong);
        }
        if let Some(c) = s
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '/')))
        {
            return Err(DocIdError::BadChar(c));
        }
        if s.split('/')
            .any(|seg| seg.is_empty() || seg == "." || seg == "..")
        {
            return Err(DocIdError::BadSegment);
        }
        Ok(Self(s.into()))
    }

    /// The id as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for DocId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for DocId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DocId({})", &self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_paths_and_punctuation() {
        for ok in ["a", "team-a/notes.md", "A_b-c.9", &"x".repeat(128)] {
            assert_eq!(DocId::parse(ok).map(|d| d.to_string()).as_deref(), Ok(ok));
        }
    }

    #[test]
    fn refuses_each_broken_rule() {
        assert_eq!(DocId::parse(""), Err(DocIdError::Empty));
        assert_eq!(DocId::parse(&"x".repeat(129)), Err(DocIdError::TooLong));
        assert_eq!(DocId::parse("a b"), Err(DocIdError::BadChar(' ')));
        assert_eq!(DocId::parse("a\0b"), Err(DocIdError::BadChar('\0')));
        assert_eq!(DocId::parse("é"), Err(DocIdError::BadChar('é')));
        for bad in ["/a", "a/", "a//b", "../a", "a/./b", "."] {
            assert_eq!(DocId::parse(bad), Err(DocIdError::BadSegment), "{bad}");
        }
    }
}
