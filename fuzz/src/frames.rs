//! The byte layout of multi-frame inputs: each frame is a little-endian
//! `u16` length and that many bytes. A short last frame takes whatever is
//! left, so every byte string is a valid input.

/// Most frames one input is cut into; the rest of the input is ignored.
pub const MAX_FRAMES: usize = 64;

/// Cuts an input into frames.
pub fn split(mut data: &[u8]) -> Vec<&[u8]> {
    let mut frames = Vec::new();
    while data.len() >= 2 && frames.len() < MAX_FRAMES {
        let len = usize::from(u16::from_le_bytes([data[0], data[1]]));
        let rest = &data[2..];
        let (frame, tail) = rest.split_at(len.min(rest.len()));
        frames.push(frame);
        data = tail;
    }
    frames
}

/// The input that [`split`] cuts into `frames`.
///
/// # Panics
/// If a frame is longer than `u16::MAX` bytes.
pub fn join<F: AsRef<[u8]>>(frames: &[F]) -> Vec<u8> {
    let mut out = Vec::new();
    for frame in frames {
        let frame = frame.as_ref();
        let len = u16::try_from(frame.len()).expect("a seed frame under 64 KiB");
        out.extend_from_slice(&len.to_le_bytes());
        out.extend_from_slice(frame);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn join_then_split_round_trips() {
        let frames: Vec<&[u8]> = vec![b"", b"abc", &[0xff; 300]];
        assert_eq!(split(&join(&frames)), frames);
    }

    #[test]
    fn a_short_last_frame_takes_the_rest() {
        assert_eq!(split(&[5, 0, 1, 2]), vec![&[1u8, 2][..]]);
        assert!(split(&[7]).is_empty());
    }
}
