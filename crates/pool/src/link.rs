//! The pool as the relay link sees it (issue 17).

use std::sync::Arc;

use tbg_events::EventData;

use crate::{BlockStore, PoolShared, RelayedBlock, RelayedBlockError};

/// What a region's link to other regions may do with the pool: take a
/// block a relay found, and journal the region's own events. Cheap to
/// clone.
#[derive(Clone)]
pub struct PoolLink {
    shared: Arc<PoolShared>,
}

impl PoolLink {
    pub(crate) fn new(shared: Arc<PoolShared>) -> PoolLink {
        PoolLink { shared }
    }

    /// A relay's block: checked, then stored and submitted to this pool's
    /// nodes like one of its own (without its events: the relay region
    /// journals those). Resolves once the block is in the block store.
    pub fn take_relayed_block(
        &self,
        block: RelayedBlock,
    ) -> Result<tokio::sync::oneshot::Receiver<()>, RelayedBlockError> {
        let found = crate::blocks::relayed::check(block)?;
        Ok(self.shared.block_found(found))
    }

    /// Journals an event of this pool (region failover and failback).
    pub fn emit(&self, data: EventData) -> u64 {
        self.shared.emit(data)
    }

    /// The block store, if the pool keeps one.
    pub fn block_store(&self) -> Option<BlockStore> {
        self.shared.block_store.clone()
    }
}
