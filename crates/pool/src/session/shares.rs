//! `mining.submit` on a connection: the fields decoded (no allocation), the
//! verdict asked of the share validator (`tbg_work::validate`, where every
//! share rule lives), the answer, the accepted share's accounting (events,
//! stats, vardiff), and a block handed on to be submitted.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::Value;
use tbg_events::EventData;
use tbg_stratum::{RejectReason, Request, Submit, MAX_EXTRANONCE2_BYTES};
use tbg_work::{AcceptedShare, KeptJob, ShareContext, ShareReject, Submission};
use tokio::sync::watch;

use super::limits::rate_limit_error;
use super::{split_address_worker, CloseReason, Session};
use crate::blocks::FoundBlock;
use crate::limits::LimitKind;
use crate::work_source::CurrentWork;

/// A submit's hex fields as numbers and bytes.
struct Decoded {
    extranonce2: [u8; MAX_EXTRANONCE2_BYTES],
    extranonce2_len: usize,
    ntime: u32,
    nonce: u32,
    version_bits: Option<u32>,
}

impl Decoded {
    fn extranonce2(&self) -> &[u8] {
        &self.extranonce2[..self.extranonce2_len]
    }
}

fn decode(submit: &Submit) -> Result<Decoded, RejectReason> {
    let hex = submit.extranonce2.as_bytes();
    if !hex.len().is_multiple_of(2) {
        return Err(RejectReason::InvalidNonce2Hex);
    }
    let extranonce2_len = hex.len() / 2;
    if extranonce2_len > MAX_EXTRANONCE2_BYTES {
        return Err(RejectReason::InvalidNonce2Length);
    }
    let mut extranonce2 = [0u8; MAX_EXTRANONCE2_BYTES];
    hex::decode_to_slice(hex, &mut extranonce2[..extranonce2_len])
        .map_err(|_| RejectReason::InvalidNonce2Hex)?;
    Ok(Decoded {
        extranonce2,
        extranonce2_len,
        ntime: submit.ntime_u32()?,
        nonce: submit.nonce_u32()?,
        version_bits: submit.version_bits_u32()?,
    })
}

/// ckpool's wording for each verdict.
fn reject_reason(reject: ShareReject) -> RejectReason {
    match reject {
        ShareReject::UnknownJob => RejectReason::InvalidJobId,
        ShareReject::Nonce2Length => RejectReason::InvalidNonce2Length,
        ShareReject::NtimeOutOfRange => RejectReason::NtimeOutOfRange,
        ShareReject::VersionMask => RejectReason::InvalidVersionMask,
        ShareReject::Duplicate => RejectReason::Duplicate,
        ShareReject::Stale => RejectReason::Stale,
        ShareReject::AboveTarget => RejectReason::AboveTarget,
    }
}

fn unix_now() -> u32 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| {
            u32::try_from(since.as_secs()).unwrap_or(u32::MAX)
        })
}

impl Session {
    /// `over_rate`: the submit is past `max_submits_per_minute`. It is
    /// judged all the same (hashing is ~200 ns; the limit bounds journal
    /// writes and events, not work): a block in it is credited and
    /// submitted like any block, an invalid share is answered with its
    /// reason, and a valid one is answered with the rate-limit error. None
    /// of them writes a `share_submitted` event, none is a protocol error.
    pub(super) fn submit(
        &mut self,
        request: &Request,
        submit: &Submit,
        over_rate: bool,
        out: &mut String,
        work_rx: &watch::Receiver<Option<Arc<CurrentWork>>>,
    ) -> Result<(), CloseReason> {
        let started = Instant::now();
        // One read of the wall clock per submit: the ntime check and the
        // day of the best-share record.
        let unix_secs = unix_now();
        let (share, worker_index, decoded) = match self.judge(submit, unix_secs, work_rx) {
            Ok(judged) => judged,
            Err(reason) => {
                return self.reject_share(request, Some(submit), reason, !over_rate, out)
            }
        };
        if over_rate && !share.is_block {
            self.refuse_over_rate(request, started, out, work_rx);
            return Ok(());
        }
        let reply_at = out.len();
        let journaled = self.credit_share(
            &share,
            worker_index,
            decoded.extranonce2(),
            started,
            unix_secs,
            out,
            work_rx,
        );
        let reply = if journaled {
            tbg_stratum::response_ok(&request.id, Value::Bool(true))
        } else {
            tbg_stratum::response_reject(&request.id, RejectReason::JournalFull)
        };
        out.insert_str(reply_at, &reply);
        if journaled {
            self.shared.counters.share_latency(started.elapsed());
        }
        tracing::debug!(client = self.client_id, worker = %submit.worker,
            difficulty = share.share_difficulty, journaled, "share accepted");
        Ok(())
    }

    /// An accepted share's consequences, whatever the protocol: a block in
    /// it built and handed on to be stored and submitted, the share's
    /// events, stats and vardiff. False when the journal refused its event
    /// (the caller answers with that).
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn credit_share(
        &mut self,
        share: &AcceptedShare,
        worker_index: usize,
        extranonce2: &[u8],
        started: Instant,
        unix_secs: u32,
        out: &mut String,
        work_rx: &watch::Receiver<Option<Arc<CurrentWork>>>,
    ) -> bool {
        // Built before the accounting, which may retarget and so push a job
        // (the share's job index is only valid until then).
        let block = if share.is_block {
            let block = self.found_block(share, worker_index, extranonce2);
            if block.is_none() {
                // The validator just found the job and the miner: unreachable, but never silent.
                tracing::error!(hash = %share.hash, "BLOCK FOUND but its job or miner is gone; not submitted");
            }
            block
        } else {
            None
        };
        let unix_day = u64::from(unix_secs) / 86_400;
        let journaled = self.account_accepted(share, worker_index, started, unix_day, out, work_rx);
        if let Some(block) = block {
            let stored = self.shared.block_found(block);
            self.block_stored.push(stored);
        }
        journaled
    }

    /// Who may submit (the connection's business), then the share rules
    /// (the validator's). Returns the share, its worker's index and fields.
    fn judge(
        &mut self,
        submit: &Submit,
        unix_secs: u32,
        work_rx: &watch::Receiver<Option<Arc<CurrentWork>>>,
    ) -> Result<(AcceptedShare, usize, Decoded), RejectReason> {
        if self.allocation.is_none() {
            return Err(RejectReason::NotSubscribed);
        }
        let Some(user) = &self.authorized else {
            return Err(RejectReason::Unauthorized);
        };
        let (address, worker) = split_address_worker(&submit.worker);
        let worker = worker.unwrap_or("default");
        if address != user.address {
            return Err(RejectReason::WorkerMismatch);
        }
        let Some(worker_index) = user.workers.iter().position(|(name, _)| name == worker) else {
            return Err(RejectReason::Unauthorized);
        };
        let decoded = decode(submit)?;
        let submission = Submission {
            job_id: &submit.job_id,
            extranonce2: decoded.extranonce2(),
            ntime: decoded.ntime,
            nonce: decoded.nonce,
            version_bits: decoded.version_bits,
        };
        let share = self.validate_share(&submission, unix_secs, work_rx)?;
        Ok((share, worker_index, decoded))
    }

    /// The share rules (`tbg_work::validate`) for this connection's
    /// extranonces, the pool's tip and the time.
    pub(crate) fn validate_share(
        &mut self,
        submission: &Submission<'_>,
        unix_secs: u32,
        work_rx: &watch::Receiver<Option<Arc<CurrentWork>>>,
    ) -> Result<AcceptedShare, RejectReason> {
        let Some(allocation) = &self.allocation else {
            return Err(RejectReason::NotSubscribed);
        };
        let current_prev = work_rx
            .borrow()
            .as_ref()
            .map(|work| work.template.previous_block_hash);
        let settings = &self.shared.settings;
        let context = ShareContext {
            extranonce1: &allocation.extranonce1,
            extranonce2_len: self.extranonce2_len(),
            current_prev,
            now: unix_secs,
            ntime_window: u32::try_from(settings.ntime_future_window.as_secs()).unwrap_or(u32::MAX),
        };
        let found_blocks = &self.shared.found_blocks;
        self.shares
            .validate(submission, &context, |hash| found_blocks.lock().claim(hash))
            .map_err(reject_reason)
    }

    /// Credits an accepted share (events, stats, vardiff); false when the
    /// journal refused its event. A block in it is submitted by the caller.
    fn account_accepted(
        &mut self,
        share: &tbg_work::AcceptedShare,
        worker_index: usize,
        now: Instant,
        unix_day: u64,
        out: &mut String,
        work_rx: &watch::Receiver<Option<Arc<CurrentWork>>>,
    ) -> bool {
        let Some(user) = &self.authorized else {
            return true;
        };
        // `worker_index` came from `position` over this very list.
        let Some((worker, handle)) = user.workers.get(worker_index) else {
            return true;
        };
        // The share's event first: only a share the journal took is
        // credited. One it refused (full) is counted as rejected with its
        // own reason, so no counter, status or best difficulty shows a share
        // the miner was told was refused.
        let journaled = self.emit(EventData::ShareSubmitted {
            user: user.address.clone(),
            worker: worker.clone(),
            client_id: self.client_id,
            diff: share.target_difficulty,
            sdiff: share.share_difficulty,
            accepted: true,
            reject_reason: None,
            ip: self.peer.ip().to_string(),
        });
        if journaled {
            self.shares_session += 1;
            self.shared.counters.share_accepted(share.target_difficulty);
            let previous_best = handle.lock().record_accepted(
                share.target_difficulty,
                share.share_difficulty,
                now,
                unix_day,
            );
            if let Some(prev_best) = previous_best {
                self.emit(EventData::ShareBestDiff {
                    user: user.address.clone(),
                    worker: worker.clone(),
                    new_best: share.share_difficulty,
                    prev_best,
                    timeframe: "alltime".to_string(),
                });
            }
            self.best_session = self.best_session.max(share.share_difficulty);
        } else {
            // Not counted towards the invalid-shares limit: the pool is at
            // fault, not the miner.
            self.shared
                .counters
                .share_rejected(RejectReason::JournalFull);
            handle.lock().record_rejected();
        }
        if journaled
            && now.saturating_duration_since(self.last_hashrate_event)
                >= self.shared.settings.hashrate_event_interval
        {
            self.last_hashrate_event = now;
            let stats = handle.lock();
            let [h1m, h5m, h1h, h1d] = stats.rates.hashrates(now);
            drop(stats);
            self.emit(EventData::HashrateUpdate {
                user: user.address.clone(),
                worker: worker.clone(),
                hashrate_1m: h1m,
                hashrate_5m: h5m,
                hashrate_1h: h1h,
                hashrate_1d: h1d,
            });
        }
        // Vardiff still counts a refused share: it measures the miner's
        // rate, which the journal does not change.
        self.vardiff_share(now, out, work_rx);
        journaled
    }

    /// A valid share (not a block) past the submit rate: answered with the
    /// rate-limit error, neither credited nor journaled, and yet counted by
    /// vardiff, whose retarget is what brings a fast miner (an ASIC at a
    /// low start difficulty) back under the limit.
    fn refuse_over_rate(
        &mut self,
        request: &Request,
        now: Instant,
        out: &mut String,
        work_rx: &watch::Receiver<Option<Arc<CurrentWork>>>,
    ) {
        self.shared.guard.refused(
            &self.shared.counters,
            LimitKind::SubmitRate,
            self.peer,
            Some(self.client_id),
            now,
        );
        out.push_str(&rate_limit_error(&request.id, &request.method));
        self.vardiff_share(now, out, work_rx);
    }

    /// One more valid share for vardiff's rate measurement; retargets when
    /// it says so.
    pub(super) fn vardiff_share(
        &mut self,
        now: Instant,
        out: &mut String,
        work_rx: &watch::Receiver<Option<Arc<CurrentWork>>>,
    ) {
        let seconds = self.shared.seconds(now);
        let retarget = self
            .vardiff
            .as_mut()
            .and_then(|vardiff| vardiff.on_share(seconds));
        if let Some(new) = retarget {
            self.retarget(new, now, out, work_rx);
        }
    }

    /// The block of a share the validator found to be one (and claimed).
    fn found_block(
        &self,
        share: &AcceptedShare,
        worker_index: usize,
        extranonce2: &[u8],
    ) -> Option<FoundBlock> {
        let user = self.authorized.as_ref()?;
        let allocation = self.allocation.as_ref()?;
        let (worker, _) = user.workers.get(worker_index)?;
        let kept = self.shares.job(share.job)?;
        let block_hex = kept.job.block_hex(
            &allocation.extranonce1,
            extranonce2,
            share.ntime,
            share.nonce,
            share.version,
        );
        let template = &kept.job.template;
        tracing::info!(
            height = template.height,
            hash = %share.hash,
            user = %user.address,
            worker = %worker,
            stale = share.stale,
            "BLOCK FOUND"
        );
        Some(FoundBlock {
            height: template.height,
            hash: share.hash,
            block_hex,
            user: user.address.clone(),
            worker: worker.clone(),
            share_difficulty: share.share_difficulty,
            network_difficulty: tbg_work::target_to_difficulty(&template.network_target),
            reward_sats: reward_sats(kept),
            coinbase_sig: user.user_sig.clone().unwrap_or_default(),
            origin: None,
        })
    }
}

/// What a block on this job pays: its template's coinbase value.
fn reward_sats(kept: &KeptJob) -> u64 {
    kept.job
        .template
        .template
        .as_ref()
        .map_or(0, |template| template.coinbase_value)
}

/// A refused share's accounting.
impl Session {
    /// Answers a refused share and accounts for it; `journal`: with its
    /// `share_submitted` event (not for a submit over its rate, whose
    /// events the rate limit bounds). It counts towards the invalid-shares
    /// limit either way: an invalid share is the miner's fault at any rate.
    pub(super) fn reject_share(
        &mut self,
        request: &Request,
        submit: Option<&Submit>,
        reason: RejectReason,
        journal: bool,
        out: &mut String,
    ) -> Result<(), CloseReason> {
        out.push_str(&tbg_stratum::response_reject(&request.id, reason));
        let worker_name = submit
            .map(|s| split_address_worker(&s.worker).1.unwrap_or("default"))
            .unwrap_or_default();
        self.account_rejected(worker_name, reason, journal)
    }

    /// A refused share's accounting, whatever the protocol: the worker's
    /// stats, its event (`journal`), and the invalid-shares limit, which
    /// closes the connection when it is passed.
    pub(crate) fn account_rejected(
        &mut self,
        worker_name: &str,
        reason: RejectReason,
        journal: bool,
    ) -> Result<(), CloseReason> {
        self.shared.counters.share_rejected(reason);
        tracing::debug!(
            client = self.client_id,
            worker = worker_name,
            reason = reason.message(),
            "share rejected"
        );
        if let Some(user) = &self.authorized {
            if let Some((_, handle)) = user.workers.iter().find(|(name, _)| *name == worker_name) {
                handle.lock().record_rejected();
            }
            if journal {
                self.emit(EventData::ShareSubmitted {
                    user: user.address.clone(),
                    worker: worker_name.to_string(),
                    client_id: self.client_id,
                    diff: self.difficulty,
                    sdiff: 0.0,
                    accepted: false,
                    reject_reason: Some(reason.message().to_string()),
                    ip: self.peer.ip().to_string(),
                });
            }
        }
        let now = Instant::now();
        let (window_start, count) = &mut self.invalid_window;
        if now.saturating_duration_since(*window_start) > Duration::from_secs(60) {
            *window_start = now;
            *count = 0;
        }
        *count += 1;
        if *count > self.shared.live().max_invalid_shares_per_minute {
            tracing::info!(client = self.client_id, peer = %self.peer, "too many invalid shares; closing");
            return Err(CloseReason::TooManyInvalidShares);
        }
        Ok(())
    }
}
