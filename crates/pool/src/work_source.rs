//! Templates from the node, turned into the work every session mines on.

use std::sync::Arc;
use std::time::Instant;

use tbg_events::EventData;
use tbg_node::FetchedTemplate;
use tbg_work::{JobTemplate, Template};
use tokio::sync::watch;

use crate::notify::NotifyCache;
use crate::PoolShared;

/// The work of the moment, shared by every session.
#[derive(Debug)]
pub struct CurrentWork {
    /// Increases with every template.
    pub generation: u64,
    pub template: Arc<Template>,
    pub job_template: Arc<JobTemplate>,
    /// The previous block changed: miners must drop older jobs.
    pub clean_jobs: bool,
    pub network_difficulty: f64,
    pub received_at: Instant,
    /// This template's notify per payout user, built by the first session.
    pub(crate) notifies: NotifyCache,
}

/// Parses every template, keeps the last good one, and publishes work.
/// A template that does not parse is logged and skipped: miners stay on the
/// previous work rather than getting broken work.
pub(crate) async fn run(
    shared: Arc<PoolShared>,
    mut templates: watch::Receiver<Option<Arc<FetchedTemplate>>>,
    work_tx: watch::Sender<Option<Arc<CurrentWork>>>,
) {
    let mut generation = 0u64;
    let mut last_prev: Option<bitcoin::BlockHash> = None;
    loop {
        let update = templates.borrow_and_update().clone();
        if let Some(update) = update {
            match Template::from_gbt(&update.gbt) {
                Ok(template) => {
                    generation += 1;
                    let new_prev = last_prev != Some(template.previous_block_hash);
                    // `new_block` is also set by a relay's switch between
                    // the primary's and its own node's templates: miners
                    // drop work of the source given up.
                    let clean_jobs = new_prev || update.new_block;
                    let template = Arc::new(template);
                    let job_template = Arc::new(JobTemplate::new(template.clone()));
                    let network_difficulty = tbg_work::target_to_difficulty(&template.target);
                    if new_prev {
                        tracing::info!(
                            height = template.height,
                            prev = %template.previous_block_hash,
                            txs = template.transactions.len(),
                            "new block on the network: new work"
                        );
                        shared.emit(EventData::NewBlockNetwork {
                            height: u64::from(template.height.saturating_sub(1)),
                            hash: template.previous_block_hash.to_string(),
                            diff: network_difficulty,
                            prev_hash: last_prev.map(|h| h.to_string()).unwrap_or_default(),
                        });
                    }
                    last_prev = Some(template.previous_block_hash);
                    shared
                        .counters
                        .set_template(template.height, network_difficulty);
                    let work = CurrentWork {
                        generation,
                        template,
                        job_template,
                        clean_jobs,
                        network_difficulty,
                        received_at: update.fetched_at,
                        notifies: NotifyCache::default(),
                    };
                    // send_replace: publishing never fails even with no session yet.
                    work_tx.send_replace(Some(Arc::new(work)));
                }
                Err(error) => {
                    tracing::error!(%error, "node sent a template that does not parse; keeping the previous work");
                }
            }
        }
        // Runs until the watcher goes away or the pool aborts it after every
        // session has said goodbye; it does not watch `shutdown` itself, so
        // sessions never see their work channel close before they are told.
        if templates.changed().await.is_err() {
            return;
        }
    }
}
