//! Structural checks on an incoming Yjs v1 update that yrs does not make.
//!
//! yrs decodes an update whose struct list names the same client twice by
//! appending the second run of blocks to the first, so the client's blocks
//! can overlap or leave gaps. yrs then either panics while integrating
//! (`unreachable!` in `BlockSet::exclude`, an overflow in `BlockStore::push`)
//! or integrates blocks whose clocks disagree with what the sender meant, so
//! that replicas hold different content under the same id. The JS Yjs
//! decoder instead keeps only the last run. No Yjs or yrs encoder writes a
//! client twice, so [`check`] refuses such an update before yrs sees it.
//!
//! The walk reads the encoding with yrs's own public decoder, so it accepts
//! exactly the content kinds yrs accepts.

use std::collections::HashSet;

use yrs::block::{ItemContent, BLOCK_GC_REF_NUMBER, BLOCK_SKIP_REF_NUMBER};
use yrs::encoding::read::Read;
use yrs::updates::decoder::{Decoder, DecoderV1};
use yrs::ClientID;

/// Flags in an item's info byte (the y-protocols struct encoding).
const HAS_ORIGIN: u8 = 0b1000_0000;
const HAS_RIGHT_ORIGIN: u8 = 0b0100_0000;
const HAS_PARENT_SUB: u8 = 0b0010_0000;

/// Why an update was refused before applying it.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum UpdateDefect {
    #[error("the update lists client {0} more than once")]
    ClientRepeated(u64),
    #[error("the update's structs do not decode: {0}")]
    Malformed(String),
}

/// Walks the struct section of a v1 update and refuses one that lists a
/// client twice. The delete set after it is left to yrs.
///
/// Costs one pass over the bytes, allocating only for item contents, as
/// yrs's own decode does. At most one entry per client can pass, so the set
/// of seen clients is bounded by the update's length.
///
/// # Errors
/// [`UpdateDefect`]; the caller answers with an invalid-update error.
pub fn check(update: &[u8]) -> Result<(), UpdateDefect> {
    let mut decoder = DecoderV1::from(update);
    let clients: u32 = decoder.read_var().map_err(malformed)?;
    let mut seen: HashSet<ClientID> = HashSet::new();
    for _ in 0..clients {
        let structs: u32 = decoder.read_var().map_err(malformed)?;
        let client = decoder.read_client().map_err(malformed)?;
        let _clock: u32 = decoder.read_var().map_err(malformed)?;
        if !seen.insert(client) {
            return Err(UpdateDefect::ClientRepeated(client.get()));
        }
        for _ in 0..structs {
            skip_struct(&mut decoder)?;
        }
    }
    Ok(())
}

/// Reads past one struct (GC, skip or item), as yrs's `decode_block` does.
fn skip_struct(decoder: &mut DecoderV1) -> Result<(), UpdateDefect> {
    let info = decoder.read_info().map_err(malformed)?;
    match info {
        BLOCK_SKIP_REF_NUMBER => {
            let _len: u32 = decoder.read_var().map_err(malformed)?;
        }
        BLOCK_GC_REF_NUMBER => {
            decoder.read_len().map_err(malformed)?;
        }
        info => {
            if info & HAS_ORIGIN != 0 {
                decoder.read_left_id().map_err(malformed)?;
            }
            if info & HAS_RIGHT_ORIGIN != 0 {
                decoder.read_right_id().map_err(malformed)?;
            }
            if info & (HAS_ORIGIN | HAS_RIGHT_ORIGIN) == 0 {
                if decoder.read_parent_info().map_err(malformed)? {
                    decoder.read_string().map_err(malformed)?;
                } else {
                    decoder.read_left_id().map_err(malformed)?;
                }
                if info & HAS_PARENT_SUB != 0 {
                    decoder.read_string().map_err(malformed)?;
                }
            }
            ItemContent::decode(decoder, info).map_err(malformed)?;
        }
    }
    Ok(())
}

fn malformed(e: impl std::fmt::Display) -> UpdateDefect {
    UpdateDefect::Malformed(e.to_string())
}

#[cfg(test)]
mod tests {
    use yrs::updates::decoder::Decode;
    use yrs::{Doc, Options, ReadTxn, StateVector, Text, Transact, Update};

    use super::*;

    /// lib0's unsigned varint.
    fn var(out: &mut Vec<u8>, mut v: u64) {
        while v >= 0x80 {
            out.push((v as u8 & 0x7f) | 0x80);
            v >>= 7;
        }
        out.push(v as u8);
    }

    /// A v1 update of one run of `text` per `(clock, text)`, all from
    /// `client`, each string item a root item of `content`.
    fn runs(client: u64, runs: &[(u64, &str)]) -> Vec<u8> {
        let mut out = Vec::new();
        var(&mut out, runs.len() as u64);
        for (clock, text) in runs {
            var(&mut out, 1);
            var(&mut out, client);
            var(&mut out, *clock);
            out.push(4); // a string item with no origins
            var(&mut out, 1); // its parent is a root type, by name
            var(&mut out, 7);
            out.extend_from_slice(b"content");
            var(&mut out, text.len() as u64);
            out.extend_from_slice(text.as_bytes());
        }
        var(&mut out, 0); // empty delete set
        out
    }

    #[test]
    fn real_updates_pass() {
        let doc = Doc::with_options(Options::with_client_id(ClientID::new(7)));
        let text = doc.get_or_insert_text("content");
        text.insert(&mut doc.transact_mut(), 0, "hello");
        let first = doc.transact().state_vector();
        text.insert(&mut doc.transact_mut(), 2, "XY");
        text.remove_range(&mut doc.transact_mut(), 0, 1);
        let txn = doc.transact();
        assert_eq!(
            check(&txn.encode_state_as_update_v1(&StateVector::default())),
            Ok(())
        );
        assert_eq!(check(&txn.encode_state_as_update_v1(&first)), Ok(()));
        assert_eq!(check(&runs(7, &[(0, "ab")])), Ok(()));
        // A merge of two clients' updates lists each once.
        let other = Doc::with_options(Options::with_client_id(ClientID::new(9)));
        other
            .get_or_insert_text("content")
            .insert(&mut other.transact_mut(), 0, "z");
        let merged = yrs::merge_updates_v1([
            txn.encode_state_as_update_v1(&StateVector::default()),
            other
                .transact()
                .encode_state_as_update_v1(&StateVector::default()),
        ])
        .expect("merge");
        assert_eq!(check(&merged), Ok(()));
    }

    #[test]
    fn a_client_listed_twice_is_refused() {
        for second in [1, 5, 7, 8, 12] {
            let bytes = runs(7, &[(0, "abcdefgh"), (second, "xy")]);
            assert!(Update::decode_v1(&bytes).is_ok(), "yrs decodes it");
            assert_eq!(check(&bytes), Err(UpdateDefect::ClientRepeated(7)));
        }
    }

    #[test]
    fn truncated_bytes_are_malformed() {
        let bytes = runs(7, &[(0, "abc")]);
        for cut in 1..bytes.len() - 1 {
            assert!(
                matches!(check(&bytes[..cut]), Err(UpdateDefect::Malformed(_))),
                "cut at {cut}"
            );
        }
    }
}
