//! The protobuf types of the wire protocol (`folio.v1`) and of the on-disk
//! records (`folio.store.v1`), generated from `proto/` by build.rs, plus the
//! few helpers every transport needs. No I/O here.

pub mod ysync;

use bytes::Bytes;
use prost::Message;

/// Wire protocol v1, generated from `proto/folio/v1/folio.proto`.
#[allow(missing_docs, clippy::all)]
pub mod v1 {
    include!(concat!(env!("OUT_DIR"), "/folio.v1.rs"));
}

/// On-disk records, generated from `proto/folio/store/v1/store.proto`.
#[allow(missing_docs, clippy::all)]
pub mod store {
    include!(concat!(env!("OUT_DIR"), "/folio.store.v1.rs"));
}

pub use v1::{client_message, server_message, ClientMessage, ErrorCode, ServerMessage};

/// The protocol version this server speaks.
pub const PROTOCOL_VERSION: u32 = v1::ProtocolVersion::V1 as u32;

/// Encodes a server message into the bytes of one WebSocket frame.
///
/// Broadcasts are encoded once and the returned `Bytes` shared by every subscriber.
pub fn encode(kind: server_message::Kind) -> Bytes {
    let msg = ServerMessage { kind: Some(kind) };
    Bytes::from(msg.encode_to_vec())
}

/// Builds the frame for an [`v1::Error`].
pub fn error_frame(doc: &str, code: ErrorCode, message: impl Into<String>, seq: u64) -> Bytes {
    encode(server_message::Kind::Error(v1::Error {
        doc: doc.to_owned(),
        code: code as i32,
        message: message.into(),
        seq,
        ..v1::Error::default()
    }))
}

/// Builds the frame for a `RATE_LIMITED` [`v1::Error`]: the refused message
/// (an update's `seq`, or 0) may be sent again after `retry_after`.
pub fn rate_limited_frame(
    doc: &str,
    message: impl Into<String>,
    seq: u64,
    retry_after: std::time::Duration,
) -> Bytes {
    encode(server_message::Kind::Error(v1::Error {
        doc: doc.to_owned(),
        code: ErrorCode::RateLimited as i32,
        message: message.into(),
        seq,
        // At least 1 ms, so that 0 keeps meaning "not rate limited".
        retry_after_ms: u64::try_from(retry_after.as_millis())
            .unwrap_or(u64::MAX)
            .max(1),
    }))
}
