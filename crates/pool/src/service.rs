//! The pool wired to its nodes: node set, template watcher, stratum server.

use std::sync::Arc;
use std::time::Duration;

use tbg_events::{EventFactory, EventSink};
use tbg_node::{
    ChainInfo, FetchedTemplate, IntervalControl, NodeEndpoint, NodeError, NodeHealth, NodeSet,
    TemplateWatcher, WatcherConfig,
};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use crate::counters::RpcMetrics;
use crate::{PoolDeps, PoolError, PoolHandle, PoolSettings, StoredBlock};

#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error("node configuration: {0}")]
    Node(#[from] NodeError),
    #[error(transparent)]
    Pool(#[from] PoolError),
}

/// How the service reaches its nodes.
#[derive(Debug, Clone)]
pub struct NodeSettings {
    /// In priority order.
    pub endpoints: Vec<NodeEndpoint>,
    pub rpc_timeout: Duration,
    pub watcher: WatcherConfig,
}

/// The templates the pool mines on, as a watch channel.
pub type Templates = watch::Receiver<Option<Arc<FetchedTemplate>>>;

/// How a region of several wires into the pool; the default is a single
/// region.
#[derive(Default)]
pub struct RegionWiring {
    /// A relay's failover: takes the local node watcher's templates and
    /// returns what the pool mines on (the primary's while it is heard).
    #[allow(clippy::type_complexity)]
    pub route_templates: Option<Box<dyn FnOnce(Templates) -> Templates + Send>>,
    /// A relay's link to the primary: every block found here, once stored.
    pub block_tap: Option<mpsc::Sender<StoredBlock>>,
}

/// A running pool with its node watcher.
pub struct PoolService {
    pub pool: PoolHandle,
    /// What the pool mines on (a primary streams these to its relays).
    pub templates: Templates,
    pub nodes: Arc<NodeSet>,
    pub node_health: watch::Receiver<NodeHealth>,
    /// Latency of every RPC call to the nodes, for `/metrics`.
    pub rpc_metrics: Arc<RpcMetrics>,
    /// The node's blocks, headers and peers, for `/metrics` (`None` while
    /// unknown).
    pub chain_info: watch::Receiver<Option<ChainInfo>>,
    watcher_stop: CancellationToken,
    watcher: tokio::task::JoinHandle<()>,
    watcher_intervals: IntervalControl,
}

impl PoolService {
    pub async fn start(
        settings: PoolSettings,
        node_settings: NodeSettings,
        events: Arc<dyn EventSink>,
        journal: Option<tbg_journal::Journal>,
        event_factory: EventFactory,
    ) -> Result<PoolService, ServiceError> {
        PoolService::start_in_region(
            settings,
            node_settings,
            events,
            journal,
            event_factory,
            RegionWiring::default(),
        )
        .await
    }

    /// [`PoolService::start`] for one region of several.
    pub async fn start_in_region(
        settings: PoolSettings,
        node_settings: NodeSettings,
        events: Arc<dyn EventSink>,
        journal: Option<tbg_journal::Journal>,
        event_factory: EventFactory,
        region: RegionWiring,
    ) -> Result<PoolService, ServiceError> {
        let rpc_metrics = Arc::new(RpcMetrics::default());
        let nodes = Arc::new(
            NodeSet::new(
                node_settings.endpoints,
                node_settings.rpc_timeout,
                settings.network,
            )?
            .with_observer(rpc_metrics.clone()),
        );
        let watcher_stop = CancellationToken::new();
        let running = TemplateWatcher::spawn_with_trigger(
            nodes.clone(),
            node_settings.watcher,
            watcher_stop.clone(),
        );
        let (templates, node_health, watcher, refresh, chain_info, watcher_intervals) = (
            running.templates,
            running.health,
            running.task,
            running.refresh,
            running.chain_info,
            running.intervals,
        );
        let templates = match region.route_templates {
            Some(route) => route(templates),
            None => templates,
        };
        let pool = crate::start(
            settings,
            PoolDeps {
                templates: templates.clone(),
                node_health: node_health.clone(),
                refresh: Some(refresh),
                nodes: nodes.clone(),
                events,
                journal,
                event_factory,
                block_tap: region.block_tap,
            },
        )
        .await?;
        Ok(PoolService {
            pool,
            templates,
            nodes,
            node_health,
            rpc_metrics,
            chain_info,
            watcher_stop,
            watcher,
            watcher_intervals,
        })
    }

    /// Applies new node polling periods (`blockpoll`, `update_interval`) to
    /// the running watcher; returns whether either changed.
    pub fn set_watcher_intervals(&self, watcher: &WatcherConfig) -> bool {
        self.watcher_intervals
            .set(watcher.block_poll, watcher.update_interval)
    }

    /// Graceful stop: miners are told to reconnect, then the watcher stops.
    pub async fn shutdown(self, grace: Duration) {
        self.pool.shutdown(grace).await;
        self.watcher_stop.cancel();
        let _ = self.watcher.await;
    }
}
