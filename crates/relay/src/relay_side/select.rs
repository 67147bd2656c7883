//! Whose templates the relay's miners get: the primary's or the local
//! node's, by the failover state machine and by which tip is ahead.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tbg_events::EventData;
use tbg_node::FetchedTemplate;
use tbg_pool::Templates;
use tokio::sync::{mpsc, watch};

use super::{LinkEvent, Shared};
use crate::failover::Switch;
use crate::primary::tip_of;

/// Feeds the pool the primary's or the local node's templates.
pub(super) async fn select_loop(
    shared: Arc<Shared>,
    mut local: Templates,
    mut events: mpsc::Receiver<LinkEvent>,
    out: watch::Sender<Option<Arc<FetchedTemplate>>>,
) {
    let mut primary_template: Option<Arc<FetchedTemplate>> = None;
    // On the primary's source but mining the local node's work: it is ahead.
    let mut ahead_locally = false;
    // Since when, and whether that was logged.
    let mut behind_since: Option<(Instant, bool)> = None;
    let mut ticker = tokio::time::interval(Duration::from_millis(200));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // `new_block` is the switch of source alone: a new tip is seen by the
    // pool itself (its previous block changes), and the same tip from the
    // other source (the primary catching up with our node) must not make
    // the miners drop their work a second time.
    let publish = |template: Option<Arc<FetchedTemplate>>, switched: bool| {
        if let Some(template) = template {
            let template = if template.new_block || switched {
                Arc::new(FetchedTemplate {
                    new_block: switched,
                    fetched_at: if switched {
                        Instant::now()
                    } else {
                        template.fetched_at
                    },
                    ..(*template).clone()
                })
            } else {
                template
            };
            out.send_replace(Some(template));
        }
    };
    // Miners get work at once: the local node's, until the primary is heard.
    let first = local.borrow_and_update().clone();
    if let Some((height, _)) = first.as_ref().and_then(|t| tip_of(&t.gbt)) {
        shared.local_height.store(height, Ordering::Relaxed);
    }
    publish(first, false);
    loop {
        tokio::select! {
            () = shared.stop.cancelled() => return,
            changed = local.changed() => {
                if changed.is_err() {
                    return;
                }
                let template = local.borrow_and_update().clone();
                if let Some(height) = template.as_ref().and_then(|t| tip_of(&t.gbt)) {
                    shared.local_height.store(height.0, Ordering::Relaxed);
                }
                if ahead_locally || !shared.failover.lock().source().is_primary() {
                    publish(template, false);
                }
            }
            event = events.recv() => {
                let Some(event) = event else { return };
                let now = Instant::now();
                match event {
                    LinkEvent::Up => {}
                    LinkEvent::Heard => shared.failover.lock().heard(now),
                    LinkEvent::Template(gbt) => {
                        shared.failover.lock().heard(now);
                        let new_block = primary_template.as_ref().map(|t| t.previous_block_hash())
                            != Some(tbg_node::previous_hash_of(&gbt));
                        let template = Arc::new(FetchedTemplate {
                            gbt,
                            node_index: 0,
                            fetched_at: now,
                            new_block,
                        });
                        primary_template = Some(template.clone());
                        if !ahead_locally && shared.failover.lock().source().is_primary() {
                            publish(Some(template), false);
                        }
                    }
                    LinkEvent::Lost(reason) => shared.failover.lock().lost(&reason),
                }
            }
            _ = ticker.tick() => {}
        }
        let switch = shared
            .failover
            .lock()
            .poll(Instant::now(), primary_template.is_some());
        // A primary whose node lags (or is on a shorter fork) would have
        // our miners build on a tip this region's node has passed: their
        // blocks could only be orphaned. The local node's work meanwhile;
        // the primary's again once it is level (no failover: it is heard).
        let behind = primary_behind(&shared, primary_template.as_deref());
        shared.status.lock().primary_behind_blocks = behind;
        let was_ahead = std::mem::replace(&mut ahead_locally, behind > 0);
        // Our node often hears of a block a moment before the primary's
        // template for it comes: only a lag that lasts is worth a warning.
        match (&behind_since, ahead_locally) {
            (None, true) => behind_since = Some((Instant::now(), false)),
            (Some((since, false)), true) if since.elapsed() >= LAG_WORTH_A_WARNING => {
                tracing::warn!(behind, lagging_s = since.elapsed().as_secs_f64(),
                    "relay: the primary's template is behind this region's node; mining the local node's until it catches up");
                behind_since = Some((*since, true));
            }
            (Some((since, warned)), false) => {
                if *warned && switch.is_none() {
                    tracing::info!(
                        lagged_s = since.elapsed().as_secs_f64(),
                        "relay: the primary caught up; mining its templates again"
                    );
                }
                behind_since = None;
            }
            _ => {}
        }
        match switch {
            Some(switch) => {
                on_switch(&shared, &switch);
                match switch {
                    Switch::Failover { .. } => publish(local.borrow().clone(), true),
                    Switch::Joined | Switch::Failback { .. } if ahead_locally => {
                        publish(local.borrow().clone(), true)
                    }
                    Switch::Joined | Switch::Failback { .. } => {
                        publish(primary_template.clone(), true)
                    }
                }
            }
            None if ahead_locally && !was_ahead => publish(local.borrow().clone(), false),
            None if was_ahead && !ahead_locally => publish(primary_template.clone(), false),
            None => {}
        }
    }
}

/// A primary behind for this long is logged (shorter: a block race).
const LAG_WORTH_A_WARNING: Duration = Duration::from_secs(2);

/// Blocks the primary's template is behind the local node's tip, while the
/// relay mines the primary's; 0 otherwise. Heights stand in for work: a
/// longer branch with less work is rare (testnet's minimum-difficulty
/// blocks can make one), and then the relay mines its node's tip for a
/// while, which that node considers best anyway.
fn primary_behind(shared: &Shared, primary: Option<&FetchedTemplate>) -> u64 {
    if !shared.failover.lock().source().is_primary() {
        return 0;
    }
    let Some((primary_height, _)) = primary.and_then(|t| tip_of(&t.gbt)) else {
        return 0;
    };
    shared
        .local_height
        .load(Ordering::Relaxed)
        .saturating_sub(primary_height)
}

fn on_switch(shared: &Shared, switch: &Switch) {
    let source = shared.failover.lock().source();
    let primary = {
        let mut status = shared.status.lock();
        status.source = source.as_str();
        match switch {
            Switch::Failover { .. } => status.failovers += 1,
            Switch::Failback { .. } => status.failbacks += 1,
            Switch::Joined => {}
        }
        status
            .primary_region
            .clone()
            .unwrap_or_else(|| shared.config.primary.clone())
    };
    let event = match switch {
        Switch::Joined => {
            tracing::info!(%primary, "relay: mining the primary's templates");
            return;
        }
        Switch::Failover { silent, reason } => {
            tracing::error!(%primary, silent_s = silent.as_secs_f64(), %reason,
                "relay FAILOVER: mining the local node's templates");
            EventData::RegionFailover {
                primary,
                silent_s: silent.as_secs_f64(),
                reason: reason.clone(),
            }
        }
        Switch::Failback {
            failed_over_for,
            steady_for,
        } => {
            tracing::warn!(%primary, failed_over_s = failed_over_for.as_secs_f64(),
                steady_s = steady_for.as_secs_f64(), "relay failback: mining the primary's templates again");
            EventData::RegionFailback {
                primary,
                failed_over_s: failed_over_for.as_secs_f64(),
                steady_s: steady_for.as_secs_f64(),
            }
        }
    };
    match shared.pool.get() {
        Some(pool) => {
            pool.emit(event);
        }
        None => tracing::warn!("relay: a switch before the pool started; not journaled"),
    }
}
