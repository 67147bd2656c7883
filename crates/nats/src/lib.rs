//! Events over NATS JetStream: each region's publisher reads its own
//! journal from a durable cursor and publishes every event to
//! `events.<region>.<type>` with its id as `Nats-Msg-Id`.
//!
//! A NATS outage loses nothing: the journal keeps every event, the cursor
//! moves only after JetStream acknowledged each message up to it, and a
//! restart publishes again from the cursor (JetStream's duplicate window
//! drops what it already has; the primary's collector is idempotent on the
//! event id beyond it).
//!
//! On the primary, [`Ingest`] consumes every other region's events into
//! the primary's own journal, from where its collector writes them.

mod ingest;
mod publisher;
mod receipts;
mod servers;
mod stream;

pub use ingest::{Ingest, IngestConfig, IngestError, IngestStats};
pub use publisher::{
    subject, PublishError, Publisher, PublisherConfig, PublisherStats, ReconcileConfig,
};
pub use receipts::{
    missing, receipt_subject, Receipt, ReceiptBook, ReceiptFileError, Reconciler, RELAY_SEQ_HEADER,
};
pub use servers::{connect, server_addrs, ConnectError, NatsAccess, ServerListError};
pub use stream::{ensure_stream, wait_for_stream, StreamError, StreamSettings};
pub use tbg_journal::{Cursor, CursorError};
