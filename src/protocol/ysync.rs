//! Frames of the y-protocols sync and awareness messages, as the standard
//! `y-websocket` provider speaks them: `[messageType varuint, payload...]`,
//! with `0` sync (`0` step 1, `1` step 2, `2` update) and `1` awareness.
//! Built by hand from already-encoded payloads, so a broadcast is never
//! decoded and encoded again.

use bytes::Bytes;
use yrs::encoding::write::Write;
use yrs::sync::protocol::{
    MSG_AUTH, MSG_AWARENESS, MSG_SYNC, MSG_SYNC_STEP_1, MSG_SYNC_STEP_2, MSG_SYNC_UPDATE,
};
use yrs::updates::encoder::{Encoder, EncoderV1};

fn frame(tag: u8, sub: Option<u8>, payload: &[u8]) -> Bytes {
    let mut enc = EncoderV1::new();
    enc.write_var(tag);
    if let Some(sub) = sub {
        enc.write_var(sub);
    }
    enc.write_buf(payload);
    Bytes::from(enc.to_vec())
}

/// Sync step 1: the sender's state vector (v1 encoding).
pub fn step1(state_vector: &[u8]) -> Bytes {
    frame(MSG_SYNC, Some(MSG_SYNC_STEP_1), state_vector)
}

/// Sync step 2: the update the receiver lacks.
pub fn step2(update: &[u8]) -> Bytes {
    frame(MSG_SYNC, Some(MSG_SYNC_STEP_2), update)
}

/// A live document update.
pub fn update(update: &[u8]) -> Bytes {
    frame(MSG_SYNC, Some(MSG_SYNC_UPDATE), update)
}

/// An awareness update (y-protocols awareness encoding).
pub fn awareness(update: &[u8]) -> Bytes {
    frame(MSG_AWARENESS, None, update)
}

/// The y-protocols auth message "permission denied" (`y-protocols/auth`:
/// sub-type 0, then the reason). The provider logs the reason.
pub fn permission_denied(reason: &str) -> Bytes {
    frame(MSG_AUTH, Some(0), reason.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;
    use yrs::sync::{Message, SyncMessage};
    use yrs::updates::decoder::Decode;

    #[test]
    fn frames_decode_as_y_protocols_messages() {
        let msg = Message::decode_v1(&update(&[0, 0])).expect("decodes");
        assert_eq!(msg, Message::Sync(SyncMessage::Update(vec![0, 0])));
        let msg = Message::decode_v1(&step2(&[0, 0])).expect("decodes");
        assert_eq!(msg, Message::Sync(SyncMessage::SyncStep2(vec![0, 0])));
        let msg = Message::decode_v1(&step1(&[0])).expect("decodes");
        assert!(matches!(msg, Message::Sync(SyncMessage::SyncStep1(_))));
        let msg = Message::decode_v1(&awareness(&[0])).expect("decodes");
        assert!(matches!(msg, Message::Awareness(u) if u.clients.is_empty()));
        let msg = Message::decode_v1(&permission_denied("no")).expect("decodes");
        assert_eq!(msg, Message::Auth(Some("no".into())));
    }
}
