//! Bitcoin Core JSON-RPC client with failover between several nodes.
//!
//! Knows nothing of stratum: it fetches block templates, watches the chain
//! tip and submits blocks. Three layers:
//! - [`RpcClient`]: one node, one HTTP JSON-RPC 1.0 call at a time.
//! - [`NodeSet`]: several nodes in priority order, with health tracking.
//! - [`TemplateWatcher`]: a task that keeps the newest template in a
//!   `tokio::sync::watch` channel.
#![forbid(unsafe_code)]

mod endpoint;
mod nodeset;
mod rpc;
mod submit;
mod tip;
mod watcher;

pub use endpoint::{NodeAuth, NodeEndpoint};
pub use nodeset::{ChainInfo, NodeError, NodeSet, NodeStatus, DEFAULT_DOWN_RETRY};
pub use rpc::{RpcClient, RpcError, RpcObserver};
pub use submit::{ChainPosition, ChainReport, NodeSubmitAnswer, SubmitAnswer};
pub use tip::{compare as compare_tips, TemplateSearch, Tip, TipOrder};
pub use watcher::{
    previous_hash_of, FetchedTemplate, IntervalControl, NodeHealth, RefreshTrigger, RunningWatcher,
    TemplateWatcher, WatcherConfig, CHAIN_INFO_POLL, DEFAULT_TIP_MEMORY,
};
