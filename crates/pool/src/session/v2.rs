//! A Stratum V2 channel is a session: the same allocation, authorization,
//! share rules, accounting, events, vardiff and limits as a V1 connection;
//! only its answers go out as V2 messages (`crate::sv2::wire`). This file
//! is where a V2 message meets the session; `crate::sv2` holds the
//! connection that carries the channels.

use std::time::SystemTime;

use tbg_work::{AcceptedShare, Submission};

use super::limits::Admit;
use super::*;
use crate::limits::{LimitKind, RequestKind, Verdict};
use crate::sv2::wire::{ChannelKind, ChannelWire};

/// The version bits a V2 miner may roll: BIP320's general-purpose bits.
pub(crate) const V2_VERSION_MASK: u32 = 0x1fff_e000;

/// One share as either kind of V2 submit carries it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct V2Share<'a> {
    pub(crate) sequence_number: u32,
    pub(crate) job_id: u32,
    pub(crate) nonce: u32,
    pub(crate) ntime: u32,
    /// The whole header version (V2 sends it, not only the rolled bits).
    pub(crate) version: u32,
    /// The rollable extranonce (extended channels); `None` on a standard
    /// channel, whose extranonce is the pool's.
    pub(crate) extranonce: Option<&'a [u8]>,
}

/// What opening a channel asks for.
#[derive(Debug, Clone)]
pub(crate) struct ChannelRequest<'a> {
    pub(crate) channel_id: u32,
    pub(crate) kind: ChannelKind,
    pub(crate) user_identity: &'a str,
    pub(crate) user_agent: &'a str,
    /// Hashes per second the device claims: its start difficulty.
    pub(crate) nominal_hash_rate: f32,
    /// The easiest share the device takes, as a difficulty floor.
    pub(crate) min_difficulty: f64,
    pub(crate) extranonce2_len: usize,
    pub(crate) version_rolling: bool,
}

/// Why a channel was not opened: the V2 error code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum OpenRefusal {
    /// The extranonce space is used up (`maxclients`-like).
    ServerFull,
    /// The user identity is not an address of the pool's network.
    UnknownUser(String),
    /// The device's easiest target is above the pool's maximum difficulty.
    MaxTargetOutOfRange,
    /// The answer could not be encoded (an extranonce past 32 bytes, which
    /// the connection checks before).
    Encoding(String),
}

impl OpenRefusal {
    pub(crate) fn code(&self) -> &'static str {
        match self {
            OpenRefusal::ServerFull => {
                tbg_sv2::mining_sv2::ERROR_CODE_OPEN_MINING_CHANNEL_CHANNEL_CAPACITY_EXHAUSTED
            }
            OpenRefusal::UnknownUser(_) => {
                tbg_sv2::mining_sv2::ERROR_CODE_OPEN_MINING_CHANNEL_UNKNOWN_USER
            }
            OpenRefusal::MaxTargetOutOfRange => {
                tbg_sv2::mining_sv2::ERROR_CODE_OPEN_MINING_CHANNEL_MAX_TARGET_OUT_OF_RANGE
            }
            OpenRefusal::Encoding(_) => {
                tbg_sv2::mining_sv2::ERROR_CODE_OPEN_MINING_CHANNEL_MIN_EXTRANONCE_SIZE_TOO_LARGE
            }
        }
    }
}

/// V2's error code for a refused share.
fn share_error_code(reason: RejectReason) -> &'static str {
    match reason {
        RejectReason::InvalidJobId => "invalid-job-id",
        RejectReason::InvalidNonce2Length => "bad-extranonce-size",
        RejectReason::NtimeOutOfRange => "invalid-timestamp",
        RejectReason::InvalidVersionMask => "invalid-non-rollable-version-bit",
        RejectReason::Duplicate => "duplicate-share",
        RejectReason::Stale => "stale-share",
        RejectReason::AboveTarget => "difficulty-too-low",
        RejectReason::JournalFull => "pool-journal-full",
        _ => "invalid-share",
    }
}

/// Hashes per second to the difficulty that gives one share per
/// `interval` (a difficulty-1 share takes 2^32 hashes on average).
fn difficulty_for_rate(hash_rate: f32, interval: Duration) -> Option<f64> {
    let rate = f64::from(hash_rate);
    (rate.is_finite() && rate > 0.0).then(|| rate * interval.as_secs_f64() / 4_294_967_296.0)
}

impl Session {
    /// A V2 channel's session: its own client id, its wire.
    pub(crate) fn for_channel(
        shared: Arc<PoolShared>,
        client_id: u64,
        peer: SocketAddr,
        request: &ChannelRequest<'_>,
    ) -> Box<Session> {
        let mut session = Box::new(Session::new(shared, client_id, peer));
        session.wire = Some(Box::new(ChannelWire::new(
            request.channel_id,
            request.kind,
            request.extranonce2_len,
        )));
        session.user_agent = request.user_agent.to_string();
        session
    }

    /// Opens the channel: an extranonce1, the user identity authorized,
    /// then the success (built by `success` from the extranonce1 and the
    /// target) and the first job queued on the wire.
    pub(crate) fn open_channel(
        &mut self,
        request: &ChannelRequest<'_>,
        work_rx: &watch::Receiver<Option<Arc<CurrentWork>>>,
        success: impl FnOnce(
            &[u8],
            [u8; 32],
        ) -> Result<
            tbg_sv2::parsers_sv2::AnyMessageOwned,
            tbg_sv2::binary_sv2::Error,
        >,
    ) -> Result<(), OpenRefusal> {
        let live = self.shared.live();
        let max = live.max_difficulty.unwrap_or(tbg_work::MAX_DIFFICULTY);
        if request.min_difficulty > max {
            return Err(OpenRefusal::MaxTargetOutOfRange);
        }
        let allocation = self
            .shared
            .extranonces
            .allocate(None, Instant::now())
            .ok_or(OpenRefusal::ServerFull)?;
        self.allocation = Some(allocation);
        // V2 negotiates no mask: its jobs allow rolling the BIP320 bits,
        // all of them (a V1 miner may be granted fewer by version_mask).
        if request.version_rolling {
            self.asicboost_mask = Some(V2_VERSION_MASK);
            self.shared.counters.asicboost_miner();
        }
        self.shares.set_version_mask(Some(V2_VERSION_MASK));
        // The device's easiest target is this channel's floor, like a V1
        // suggestion: its own, never remembered.
        if request.min_difficulty > live.min_difficulty {
            self.suggested_difficulty = Some(request.min_difficulty);
        }
        self.start_hint = difficulty_for_rate(request.nominal_hash_rate, live.share_interval);
        match self.authorize_worker(request.user_identity, work_rx) {
            Ok(_) => {}
            Err(refusal) => {
                let reason = match refusal {
                    AuthorizeRefusal::InvalidAddress(error) => error,
                    other => format!("{other:?}"),
                };
                return Err(OpenRefusal::UnknownUser(reason));
            }
        }
        self.last_activity = Instant::now();
        let Some(allocation) = &self.allocation else {
            return Err(OpenRefusal::ServerFull);
        };
        let message = success(
            &allocation.extranonce1,
            crate::sv2::wire::target_bytes(self.difficulty),
        )
        .map_err(|error| OpenRefusal::Encoding(format!("{error:?}")))?;
        if let Some(wire) = &mut self.wire {
            wire.outbox.push(message);
        }
        let work = work_rx.borrow().clone();
        if let Some(work) = work {
            let mut unused = String::new();
            self.push_job(&work, &mut unused);
        }
        Ok(())
    }

    /// A submit on this channel: the rate limit (the connection's,
    /// `connection_over_rate`, and the channel's), the share rules, then the
    /// same accounting as a V1 share, answered on the wire.
    pub(crate) fn submit_v2(
        &mut self,
        submitted: &V2Share<'_>,
        connection_over_rate: bool,
        work_rx: &watch::Receiver<Option<Arc<CurrentWork>>>,
    ) -> Result<(), CloseReason> {
        let started = Instant::now();
        self.refresh_live();
        self.last_activity = started;
        let over_rate = match self
            .limiter
            .request(RequestKind::Submit, &self.live.limits, started)
        {
            Verdict::Allow => connection_over_rate,
            Verdict::Refuse(_) => true,
            Verdict::Close(_) => return Err(CloseReason::TooManyErrors),
        };
        let admit = if over_rate {
            Admit::OverSubmitRate
        } else {
            Admit::Handle
        };
        let unix_secs = SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |since| {
                u32::try_from(since.as_secs()).unwrap_or(u32::MAX)
            });
        let worker = self
            .authorized
            .as_ref()
            .and_then(|user| user.workers.first().map(|(name, _)| name.clone()))
            .unwrap_or_default();
        let sequence = submitted.sequence_number;
        let judged = self.judge_v2(submitted, unix_secs, work_rx);
        let mut unused = String::new();
        match judged {
            Err(reason) => {
                self.answer_v2(|wire| wire.share_refused(sequence, share_error_code(reason)));
                self.account_rejected(&worker, reason, admit == Admit::Handle)
            }
            Ok((share, extranonce2)) => {
                if over_rate && !share.is_block {
                    self.shared.guard.refused(
                        &self.shared.counters,
                        LimitKind::SubmitRate,
                        self.peer,
                        Some(self.client_id),
                        started,
                    );
                    self.answer_v2(|wire| wire.share_refused(sequence, "rate-limited"));
                    self.vardiff_share(started, &mut unused, work_rx);
                    return Ok(());
                }
                // The answer goes before anything the accounting queues (a
                // retarget's target and job).
                let answer_at = self.wire.as_ref().map_or(0, |wire| wire.outbox.len());
                let journaled = self.credit_share(
                    &share,
                    0,
                    &extranonce2,
                    started,
                    unix_secs,
                    &mut unused,
                    work_rx,
                );
                if let Some(wire) = &mut self.wire {
                    let tail = wire.outbox.split_off(answer_at.min(wire.outbox.len()));
                    if journaled {
                        wire.share_accepted(sequence, share.target_difficulty);
                        self.shared.counters.share_latency(started.elapsed());
                    } else {
                        wire.share_refused(sequence, share_error_code(RejectReason::JournalFull));
                    }
                    wire.outbox.extend(tail);
                }
                Ok(())
            }
        }
    }

    fn answer_v2(&mut self, answer: impl FnOnce(&mut ChannelWire)) {
        if let Some(wire) = &mut self.wire {
            answer(wire);
        }
    }

    /// The share rules for a V2 share: its version's fixed bits must be
    /// its job's, the rest is the validator's, as for V1.
    fn judge_v2(
        &mut self,
        submitted: &V2Share<'_>,
        unix_secs: u32,
        work_rx: &watch::Receiver<Option<Arc<CurrentWork>>>,
    ) -> Result<(AcceptedShare, Vec<u8>), RejectReason> {
        if self.authorized.is_none() {
            return Err(RejectReason::Unauthorized);
        }
        let Some(wire) = &self.wire else {
            return Err(RejectReason::NotSubscribed);
        };
        let extranonce2 = match submitted.extranonce {
            Some(rolled) => rolled.to_vec(),
            None => wire.fixed_extranonce2(),
        };
        let job_id = submitted.job_id.to_string();
        let base = self
            .shares
            .find(&job_id)
            .map(|kept| kept.job.template.version)
            .ok_or(RejectReason::InvalidJobId)?;
        let mask = self.shares.version_mask().unwrap_or(0);
        if (submitted.version ^ base) & !mask != 0 {
            return Err(RejectReason::InvalidVersionMask);
        }
        let submission = Submission {
            job_id: &job_id,
            extranonce2: &extranonce2,
            ntime: submitted.ntime,
            nonce: submitted.nonce,
            version_bits: Some(submitted.version & mask),
        };
        let share = self.validate_share(&submission, unix_secs, work_rx)?;
        Ok((share, extranonce2))
    }

    /// `UpdateChannel`: the device's easiest target becomes the channel's
    /// floor and its difficulty (a suggestion, as in V1: this channel only,
    /// never remembered, at the rate difficulty may change; raised or
    /// lowered). A `SetTarget` goes out only for a difficulty in force: now
    /// (`retarget`), or at the vardiff tick that applies a change held
    /// back. `Err`: the specification's error code.
    pub(crate) fn update_channel(
        &mut self,
        min_difficulty: f64,
        work_rx: &watch::Receiver<Option<Arc<CurrentWork>>>,
    ) -> Result<(), &'static str> {
        let now = Instant::now();
        self.refresh_live();
        if self
            .limiter
            .request(RequestKind::Other, &self.live.limits, now)
            != Verdict::Allow
        {
            self.shared.guard.refused(
                &self.shared.counters,
                LimitKind::RequestRate,
                self.peer,
                Some(self.client_id),
                now,
            );
            return Err("rate-limited");
        }
        let ceiling = self.live.max_difficulty.unwrap_or(tbg_work::MAX_DIFFICULTY);
        if min_difficulty > ceiling {
            return Err(tbg_sv2::mining_sv2::ERROR_CODE_UPDATE_CHANNEL_MAX_TARGET_OUT_OF_RANGE);
        }
        let floor = min_difficulty.max(self.live.min_difficulty);
        self.suggested_difficulty = Some(floor);
        let seconds = self.shared.seconds(now);
        let changed = self
            .vardiff
            .as_mut()
            .and_then(|vardiff| vardiff.suggest_difficulty(floor, seconds));
        match changed {
            Some(new) => {
                let mut unused = String::new();
                self.retarget(new, now, &mut unused, work_rx);
            }
            // Unchanged, or held back: the target in force, unless easier
            // than the device takes (then the tick that applies it says so).
            None if self.difficulty >= floor => {
                let difficulty = self.difficulty;
                self.answer_v2(|wire| wire.set_target(difficulty));
            }
            None => {}
        }
        Ok(())
    }

    /// The channel's queued messages, for the connection to send.
    pub(crate) fn take_outbox(&mut self) -> Vec<tbg_sv2::parsers_sv2::AnyMessageOwned> {
        self.wire
            .as_mut()
            .map(|wire| std::mem::take(&mut wire.outbox))
            .unwrap_or_default()
    }

    /// The V2 channel id, when this session is one.
    pub(crate) fn channel_id(&self) -> Option<u32> {
        self.wire.as_ref().map(|wire| wire.channel_id)
    }

    /// New work for this channel, unless it already has this generation.
    pub(crate) fn on_work(&mut self, work: &Arc<CurrentWork>) {
        if self.authorized.is_some() && work.generation != self.work_generation_sent {
            let mut unused = String::new();
            self.push_job(work, &mut unused);
        }
    }

    /// The periodic vardiff check of a channel.
    pub(crate) fn tick_v2(&mut self, work_rx: &watch::Receiver<Option<Arc<CurrentWork>>>) {
        let mut unused = String::new();
        self.poll_vardiff(&mut unused, work_rx);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_nominal_hash_rate_sets_the_start_difficulty_for_the_share_interval() {
        // 1 TH/s, one share per 10 s: 1e12 * 10 / 2^32.
        let difficulty = difficulty_for_rate(1e12, Duration::from_secs(10)).unwrap();
        assert!((difficulty - 2328.306).abs() < 0.01, "{difficulty}");
        assert_eq!(difficulty_for_rate(0.0, Duration::from_secs(10)), None);
        assert_eq!(difficulty_for_rate(f32::NAN, Duration::from_secs(10)), None);
    }
}
