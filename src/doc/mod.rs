//! Documents in memory: ids, shards and the registry that owns them.
//!
//! A [`DocShard`] is one document: its Yrs doc, its awareness and the
//! [`Peer`]s subscribed to it. The [`DocRegistry`] loads each shard once, on
//! first use, and evicts it when nobody has used it for a grace period.

mod compaction;
mod id;
mod peer;
mod registry;
mod shard;
mod update_check;

pub use compaction::PassCounts;
pub use id::{DocId, DocIdError, MAX_DOC_ID_BYTES};
pub use peer::{DropReason, Outbound, OutboundRx, Peer, QueueMeter, SendError, Wire};
pub use registry::{DocInfo, DocRegistry, IfDeleted, Initial, RegistryError};
pub(crate) use shard::{decode_guarded, new_doc};
pub use shard::{Applied, DocShard, ShardError, ShardSettings, CLOSE_DOC_RELOADED, TEXT_NAME};
