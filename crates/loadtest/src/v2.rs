//! The Stratum V2 miner of the load tool: one Noise NX connection and one
//! channel per simulated miner, shares as in V1 (random nonces that are
//! never blocks, or nonces ground to the channel's target), several in
//! flight in one write, each answer matched to its sequence number.

use std::collections::VecDeque;
use std::time::Instant;

use tbg_sv2::client::{
    covers, ChannelChoice, ClientConfig, ClientError, Share, ShareAnswer, Sv2Client,
};
use tbg_sv2::parsers_sv2::{AnyMessageOwned, MiningOwned};

use crate::pacer::Slot;
use crate::stats::{micros, note_notify, LocalStats, Shared};
use crate::{share_falls_due, LoadConfig, ShareMode};

/// What a V2 load needs to know of the pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct V2Load {
    /// The pool's authority public key (x-only), as miners are given it.
    pub authority_key: [u8; 32],
    pub channel: ChannelChoice,
}

/// Nonces a real share may take to find (a difficulty far above the
/// channel's is a misconfigured run, not a reason to hang).
const REAL_SHARE_TRIES: u32 = 1 << 24;

pub(crate) async fn session(
    index: usize,
    config: &LoadConfig,
    v2: V2Load,
    shared: &Shared,
    stream: tokio::net::TcpStream,
    deadline: Instant,
    pace: Option<&Slot>,
) -> Result<(), &'static str> {
    let started = Instant::now();
    let identity = format!("{}.m{index}", crate::address_of(config, index));
    let client_config = ClientConfig::new(identity, v2.channel);
    let connecting = Sv2Client::connect_over(stream, v2.authority_key, &client_config);
    let mut client = match tokio::time::timeout_at(deadline.into(), connecting).await {
        Err(_) => return Ok(()),
        Ok(Err(ClientError::Refused { .. })) => return Err("channel_refused"),
        Ok(Err(ClientError::Transport(_))) => return Err("handshake"),
        Ok(Err(_)) => return Err("setup"),
        Ok(Ok(client)) => client,
    };
    shared.authorize.lock().push(micros(started.elapsed()));

    let window = config.window.max(1);
    let mut in_flight: VecDeque<(u32, Instant)> = VecDeque::with_capacity(window);
    let mut stats = LocalStats::new();
    let mut random = crate::XorShift64((index as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15));
    let mut counter = 0u64;
    let mut seen_tip = false;
    let result = loop {
        let now = Instant::now();
        if now >= deadline {
            break Ok(());
        }
        let ready = client.active_job().is_some();
        if ready && in_flight.len() < window && pace.is_none_or(Slot::owed) {
            while in_flight.len() < window {
                if pace.is_some_and(|slot| !slot.owed()) {
                    break;
                }
                counter += 1;
                let invalid = config.invalid_fraction > 0.0
                    && (random.next() % 10_000) as f64 / 10_000.0 < config.invalid_fraction;
                let Some(mut share) = make_share(&client, config.share_mode, counter, &mut random)
                else {
                    // Reported: a difficulty past what the tool grinds (real
                    // shares) is a misconfigured run.
                    shared.error("no_share_found");
                    break;
                };
                // Taken once the share exists: a share owed is never lost.
                if pace.is_some_and(|slot| !slot.take()) {
                    break;
                }
                if invalid {
                    share.job_id = u32::MAX;
                }
                let Ok(sequence) = client.queue(&share) else {
                    break;
                };
                in_flight.push_back((sequence, now));
                stats.sent += 1;
            }
            if client.flush().await.is_err() {
                break Err("write");
            }
        }
        let wait_for_pacer = ready && in_flight.len() < window;
        let read = tokio::select! {
            read = tokio::time::timeout_at(deadline.into(), client.next_message()) => read,
            _ = share_falls_due(pace), if wait_for_pacer => continue,
        };
        let message = match read {
            Err(_) => break Ok(()),
            Ok(Err(ClientError::Transport(_))) => break Err("closed_by_pool"),
            Ok(Err(_)) => break Err("bad_message"),
            Ok(Ok(message)) => message,
        };
        let received = Instant::now();
        if let AnyMessageOwned::Mining(MiningOwned::SetNewPrevHash(tip)) = &message {
            // A miner's first tip tells nothing about block propagation.
            if std::mem::replace(&mut seen_tip, true) {
                note_notify(
                    shared,
                    hex::encode(tip.prev_hash.to_array()).as_bytes(),
                    received,
                );
            }
        }
        for (sequence, answer) in client.answers.drain(..) {
            let round_trip = |sent_at: Instant| micros(received.saturating_duration_since(sent_at));
            match &answer {
                // A success covers every earlier share not refused (a pool
                // may batch them); ours answers each share.
                ShareAnswer::Accepted => {
                    while let Some(&(sent, sent_at)) = in_flight.front() {
                        if !covers(sequence, sent) {
                            break;
                        }
                        in_flight.pop_front();
                        stats.answered(round_trip(sent_at), Ok(()));
                    }
                }
                ShareAnswer::Refused(code) => {
                    let at = in_flight.iter().position(|(sent, _)| *sent == sequence);
                    if let Some((_, sent_at)) = at.and_then(|at| in_flight.remove(at)) {
                        stats.answered(round_trip(sent_at), Err(code.as_str()));
                    }
                }
            }
        }
        stats.maybe_flush(shared, received);
    };
    stats.flush(shared, Instant::now());
    result
}

/// The next share on the active job: a random nonce that is not a block
/// (regtest: half of all nonces are), or one ground to the channel's
/// target. `None` without a job, or when no real share was found.
fn make_share(
    client: &Sv2Client,
    mode: ShareMode,
    counter: u64,
    random: &mut crate::XorShift64,
) -> Option<Share> {
    let extranonce_size = client.channel.extranonce_size;
    let extranonce = counter.to_le_bytes()[..extranonce_size.min(8)]
        .iter()
        .copied()
        .chain(std::iter::repeat(0))
        .take(extranonce_size)
        .collect::<Vec<u8>>();
    if mode == ShareMode::Real {
        let start = random.next() as u32;
        return client.find_share(&extranonce, 0, start, REAL_SHARE_TRIES, false);
    }
    let job = client.active_job()?;
    let mut header = client.header_for(job, &extranonce)?;
    header.nonce = random.next() as u32;
    for _ in 0..64 {
        if !header.is_block() {
            break;
        }
        header.nonce = random.next() as u32;
    }
    Some(Share {
        job_id: job.id,
        nonce: header.nonce,
        ntime: header.ntime,
        version: header.version,
        hash: header.hash(),
        is_block: false,
        extranonce,
    })
}
