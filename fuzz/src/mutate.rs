//! Structured mutations of real Yjs updates, driven by the fuzzer's bytes
//! through [`arbitrary::Unstructured`]: whole real updates (valid, resent,
//! out of order), merges of several, diffs against partial state vectors
//! (updates that start mid-block), and edits of one lib0 varint (a length, a
//! client id, a clock, an origin) or of raw bytes in them.

use arbitrary::{Result, Unstructured};
use bytes::Bytes;
use yrs::updates::decoder::Decode;
use yrs::{ClientID, ReadTxn, StateVector, Transact, Update};

use crate::seeds::Pool;

/// Values that tend to sit on a boundary when put in place of a varint.
const INTERESTING: [u64; 12] = [
    0,
    1,
    2,
    0x7f,
    0x80,
    0xff,
    0x3fff,
    0xffff,
    u32::MAX as u64 - 1,
    u32::MAX as u64,
    (1 << 53) - 1,
    u64::MAX,
];

/// One update made from the pool by the choices in `u`.
///
/// `near` is how many updates of each trace the document already has; real
/// updates are picked around it, so that many of them apply.
///
/// # Errors
/// When `u` runs out of bytes.
pub fn update(u: &mut Unstructured<'_>, pool: &Pool, near: usize) -> Result<Bytes> {
    let mut bytes = match u.int_in_range(0..=4u8)? {
        0 => real(u, pool, near)?,
        1 => merged(u, pool, near)?,
        2 => diff(u, pool)?,
        3 => pool.deletes[u.choose_index(pool.deletes.len())?].to_vec(),
        _ => {
            // Half of one update glued to half of another.
            let a = real(u, pool, near)?;
            let b = real(u, pool, near)?;
            let (i, j) = (u.choose_index(a.len() + 1)?, u.choose_index(b.len() + 1)?);
            let mut out = a[..i].to_vec();
            out.extend_from_slice(&b[j..]);
            out
        }
    };
    for _ in 0..u.int_in_range(0..=3u8)? {
        if bytes.is_empty() {
            break;
        }
        if u.arbitrary()? {
            varint_edit(u, &mut bytes)?;
        } else {
            byte_edit(u, &mut bytes)?;
        }
    }
    Ok(Bytes::from(bytes))
}

/// A real keystroke update, mostly one right at or after `near`.
fn real(u: &mut Unstructured<'_>, pool: &Pool, near: usize) -> Result<Vec<u8>> {
    let t = u.choose_index(pool.typed.len())?;
    let updates = &pool.typed[t];
    let i = if u.ratio(3, 4)? {
        (near + usize::from(u.int_in_range(0..=3u8)?)).min(updates.len() - 1)
    } else {
        u.choose_index(updates.len())?
    };
    Ok(updates[i].to_vec())
}

/// Several real updates merged into one, as a reconnecting client sends them.
fn merged(u: &mut Unstructured<'_>, pool: &Pool, near: usize) -> Result<Vec<u8>> {
    let n = u.int_in_range(2..=4u8)?;
    let mut parts = Vec::new();
    for _ in 0..n {
        parts.push(real(u, pool, near)?);
    }
    let parts: Vec<&[u8]> = parts.iter().map(Vec::as_slice).collect();
    Ok(yrs::merge_updates_v1(parts).unwrap_or_default())
}

/// What a document made of a trace prefix has beyond an arbitrary state
/// vector: the blocks it sends can start in the middle of a typed run.
fn diff(u: &mut Unstructured<'_>, pool: &Pool) -> Result<Vec<u8>> {
    let t = u.choose_index(pool.typed.len())?;
    let n = u.int_in_range(1..=pool.typed[t].len())?;
    let doc = yrs::Doc::new();
    for update in pool.typed[t].iter().take(n) {
        if let Ok(update) = Update::decode_v1(update) {
            let _ = doc.transact_mut().apply_update(update);
        }
    }
    let mut sv = StateVector::default();
    for _ in 0..u.int_in_range(0..=2u8)? {
        let client = if u.arbitrary()? {
            t as u64 + 1
        } else {
            u.int_in_range(0..=16u64)?
        };
        let clock = u.int_in_range(0..=2000u32)?;
        sv.set_max(ClientID::new(client), clock);
    }
    let txn = doc.transact();
    Ok(txn.encode_diff_v1(&sv))
}

/// Replaces the lib0 varint that starts at some offset with another value.
fn varint_edit(u: &mut Unstructured<'_>, bytes: &mut Vec<u8>) -> Result<()> {
    let at = u.choose_index(bytes.len())?;
    let (old, len) = read_varint(&bytes[at..]);
    let new = match u.int_in_range(0..=2u8)? {
        0 => *u.choose(&INTERESTING)?,
        1 => old.wrapping_add(1),
        _ => old.wrapping_sub(1),
    };
    bytes.splice(at..at + len, write_varint(new));
    Ok(())
}

/// Flips, inserts, removes or repeats bytes.
fn byte_edit(u: &mut Unstructured<'_>, bytes: &mut Vec<u8>) -> Result<()> {
    let at = u.choose_index(bytes.len())?;
    match u.int_in_range(0..=3u8)? {
        0 => bytes[at] ^= 1 << u.int_in_range(0..=7u8)?,
        1 => bytes.insert(at, u.arbitrary()?),
        2 => {
            let end = (at + usize::from(u.int_in_range(1..=8u8)?)).min(bytes.len());
            bytes.drain(at..end);
        }
        _ => {
            let end = (at + usize::from(u.int_in_range(1..=16u8)?)).min(bytes.len());
            let run = bytes[at..end].to_vec();
            bytes.splice(at..at, run);
        }
    }
    Ok(())
}

/// Reads a lib0 varint (7 bits a byte, low first): its value and length.
/// A varint cut short or too long reads as far as it goes.
pub fn read_varint(bytes: &[u8]) -> (u64, usize) {
    let mut value = 0u64;
    for (i, b) in bytes.iter().enumerate().take(10) {
        value |= u64::from(b & 0x7f) << (7 * i);
        if b & 0x80 == 0 {
            return (value, i + 1);
        }
    }
    (value, bytes.len().min(10))
}

/// Writes a lib0 varint.
pub fn write_varint(mut value: u64) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let b = (value & 0x7f) as u8;
        value >>= 7;
        if value == 0 {
            out.push(b);
            return out;
        }
        out.push(b | 0x80);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varints_round_trip() {
        for v in INTERESTING {
            let bytes = write_varint(v);
            assert_eq!(read_varint(&bytes), (v, bytes.len()));
        }
    }
}
