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
    }))
}
