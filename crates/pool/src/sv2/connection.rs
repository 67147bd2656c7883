//! One V2 connection: the Noise handshake, `SetupConnection`, then any
//! number of channels (each a [`Session`]), their shares and their work.
//!
//! Frames are read in the connection's own loop (`FrameReader::next` is
//! cancellation-safe): when the connection falls behind it stops reading
//! and TCP pushes back on the miner. What arrived together is handled
//! together and answered in one write. Answers are written only once the
//! events behind them are durable and any block in them is stored, as on
//! V1.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use futures::FutureExt;
use tbg_sv2::binary_sv2::Seq064KOwned;
use tbg_sv2::mining_sv2::{self, UpdateChannelErrorOwned};
use tbg_sv2::parsers_sv2::{
    AnyMessageOwned, CommonMessagesOwned, ExtensionsNegotiationOwned, ExtensionsOwned, MiningOwned,
};
use tbg_sv2::transport::{self, FrameReader, FrameWriter, TransportError};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;
use tokio::sync::watch;

use super::wire::{self, error_code, mining, ChannelKind};
use super::Sv2Settings;
use crate::limits::{ConnectionLimiter, RequestKind, Verdict};
use crate::session::v2::V2Share;
use crate::session::{CloseReason, Session, MAX_WORKERS_PER_CONNECTION, STOP_LINGER};
use crate::settings::PoolSettings;
use crate::work_source::CurrentWork;
use crate::PoolShared;

mod open;

/// Frames handled after the one awaited before the answers are written:
/// a miner's pipelined submits, bounded so a flood still gets answers.
const READ_BATCH: usize = 16;
/// The one group every channel of a connection is in; channel ids start
/// after it (a proxy requires them to differ from the group's).
const GROUP_CHANNEL_ID: u32 = 1;
/// The largest extranonce V2 allows (prefix and rollable part together).
const MAX_EXTRANONCE: usize = 32;
/// Channel opens a connection may make per minute: a proxy's miners all
/// at once, twice over (a reconnecting farm).
const OPENS_PER_MINUTE: u32 = 2 * MAX_WORKERS_PER_CONNECTION as u32;

pub(crate) async fn serve_connection(
    accepted: crate::server::Accepted,
    mut stream: TcpStream,
    work_rx: watch::Receiver<Option<Arc<CurrentWork>>>,
    shutdown: watch::Receiver<bool>,
    port: Arc<Sv2Settings>,
) -> CloseReason {
    let crate::server::Accepted {
        shared,
        client_id,
        peer,
        at: accepted_at,
    } = accepted;
    // The handshake and SetupConnection are due from the accept.
    let setup_deadline = accepted_at + port.handshake_timeout;
    let handshake = transport::accept(&mut stream, &port.key, port.cert_validity);
    let handshake = tokio::time::timeout_at(setup_deadline.into(), handshake);
    let (encrypt, decrypt) = match handshake.await {
        Ok(Ok(states)) => states,
        Ok(Err(error)) => {
            // A V1 miner on the V2 port, a scanner, a wrong key: nothing
            // of a session exists yet.
            tracing::debug!(%peer, %error, "stratum v2 handshake failed");
            shared.counters.sv2_handshake_failed();
            return CloseReason::Sv2Handshake;
        }
        Err(_) => {
            tracing::debug!(%peer, "stratum v2 handshake timed out");
            shared.counters.sv2_handshake_failed();
            return CloseReason::Sv2Handshake;
        }
    };
    let (read_half, write_half) = stream.into_split();
    let reader = FrameReader::new(read_half, decrypt, transport::POOL_MAX_INBOUND_PAYLOAD);
    let now = Instant::now();
    let live = shared.live();
    let mut connection = Connection {
        live_generation: shared.live_generation.load(Ordering::Acquire),
        live,
        shared,
        client_id,
        peer,
        writer: FrameWriter::new(write_half, encrypt),
        channels: Vec::new(),
        user_agent: None,
        version_rolling: false,
        next_channel_id: GROUP_CHANNEL_ID + 1,
        without_channel_since: now,
        last_activity: now,
        limiter: ConnectionLimiter::new(now),
        opens: (now, 0),
        setup_deadline,
    };
    let reason = connection.run(reader, work_rx, shutdown).await;
    for mut channel in connection.channels.drain(..) {
        channel.finish(reason);
    }
    reason
}

fn push_message(
    writer: &mut FrameWriter<OwnedWriteHalf>,
    client_id: u64,
    message: AnyMessageOwned,
) -> Result<(), CloseReason> {
    writer.push(message).map_err(|error| {
        tracing::error!(client = client_id, %error, "cannot encode a stratum v2 message");
        CloseReason::IoError
    })
}

struct Connection {
    shared: Arc<PoolShared>,
    client_id: u64,
    peer: SocketAddr,
    writer: FrameWriter<OwnedWriteHalf>,
    /// Open channels, each a session of its own (at most
    /// `MAX_WORKERS_PER_CONNECTION`, like a V1 connection's workers).
    /// Boxed: a session is large, and channels come and go.
    #[allow(clippy::vec_box)]
    channels: Vec<Box<Session>>,
    /// Set by `SetupConnection`: nothing else is taken before it.
    user_agent: Option<String>,
    version_rolling: bool,
    next_channel_id: u32,
    /// Since when the connection has had no channel (its start, or the
    /// close of its last one): the authorize timeout runs from there.
    without_channel_since: Instant,
    /// The last valid-looking submit on any channel (the idle timeout).
    last_activity: Instant,
    /// Channel opens and protocol errors of the connection (each channel
    /// has its own submit and invalid-share limits).
    limiter: ConnectionLimiter,
    /// Channel opens of the current minute: (its start, count).
    opens: (Instant, u32),
    setup_deadline: Instant,
    live: Arc<PoolSettings>,
    live_generation: u64,
}

impl Connection {
    async fn run(
        &mut self,
        mut reader: FrameReader<OwnedReadHalf>,
        mut work_rx: watch::Receiver<Option<Arc<CurrentWork>>>,
        mut shutdown: watch::Receiver<bool>,
    ) -> CloseReason {
        let mut vardiff_tick = tokio::time::interval(
            self.live
                .share_interval
                .max(std::time::Duration::from_secs(1)),
        );
        vardiff_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // One timer, re-armed only when it fires early or the deadline
        // moved earlier (as on V1).
        let mut armed = self.deadline();
        let timeout = tokio::time::sleep_until(armed.into());
        tokio::pin!(timeout);
        // At a stop: until when the connection still takes what the miner
        // had sent (a block may be in it), as a V1 session does.
        let mut stopping: Option<Instant> = None;
        let stop = self.shared.sessions_stop.clone();
        loop {
            self.refresh_live();
            let deadline = stopping.unwrap_or_else(|| self.deadline());
            if deadline < armed {
                armed = deadline;
                timeout.as_mut().reset(armed.into());
            }
            let ended = tokio::select! {
                biased;
                // V2's Reconnect would tell the miner to go, but the
                // reference translator panics on it: the stop stops the
                // work, answers what arrives for `STOP_LINGER`, then closes.
                _ = shutdown.changed(), if stopping.is_none() => {
                    stopping = Some(Instant::now() + STOP_LINGER);
                    None
                }
                () = stop.cancelled(), if stopping.is_some() => Some(CloseReason::Shutdown),
                read = reader.next() => {
                    let mut ended = self.on_read(read, &work_rx);
                    // Frames already here (pipelined submits) are handled
                    // before the answers go out, in one write. Dropping a
                    // pending `next` loses nothing.
                    for _ in 0..READ_BATCH {
                        if ended.is_some() {
                            break;
                        }
                        let Some(read) = reader.next().now_or_never() else {
                            break;
                        };
                        ended = self.on_read(read, &work_rx);
                    }
                    ended
                }
                changed = work_rx.changed(), if stopping.is_none() => {
                    if changed.is_err() {
                        // The pool is stopping.
                        stopping = Some(Instant::now() + STOP_LINGER);
                    } else {
                        let work = work_rx.borrow_and_update().clone();
                        if let Some(work) = work {
                            for channel in &mut self.channels {
                                channel.on_work(&work);
                            }
                        }
                    }
                    None
                }
                _ = vardiff_tick.tick(), if stopping.is_none() => {
                    for channel in &mut self.channels {
                        channel.tick_v2(&work_rx);
                    }
                    None
                }
                () = &mut timeout => {
                    if Instant::now() >= deadline {
                        Some(if stopping.is_some() {
                            CloseReason::Shutdown
                        } else if self.user_agent.is_none() {
                            // Any 64 bytes pass for a Noise key: garbage
                            // fails here, with no SetupConnection after.
                            self.shared.counters.sv2_handshake_failed();
                            CloseReason::Sv2Handshake
                        } else if self.channels.is_empty() {
                            CloseReason::AuthorizeTimeout
                        } else {
                            CloseReason::IdleTimeout
                        })
                    } else {
                        armed = deadline;
                        timeout.as_mut().reset(armed.into());
                        None
                    }
                }
            };
            // What is due goes out even when the connection ends: a share's
            // answer, the error that explains the close.
            if let Err(reason) = self.flush().await {
                return reason;
            }
            if let Some(reason) = ended {
                return reason;
            }
        }
    }

    fn refresh_live(&mut self) {
        let generation = self.shared.live_generation.load(Ordering::Acquire);
        if generation != self.live_generation {
            self.live_generation = generation;
            self.live = self.shared.live();
        }
    }

    /// The setup must come within the handshake timeout, a channel within
    /// the authorize timeout, then a share within the idle timeout.
    fn deadline(&self) -> Instant {
        if self.user_agent.is_none() {
            self.setup_deadline
        } else if self.channels.is_empty() {
            self.without_channel_since + self.live.authorize_timeout
        } else {
            self.last_activity + self.live.idle_timeout
        }
    }

    fn on_read(
        &mut self,
        read: Result<AnyMessageOwned, TransportError>,
        work_rx: &watch::Receiver<Option<Arc<CurrentWork>>>,
    ) -> Option<CloseReason> {
        match read {
            Ok(message) => self.handle(message, work_rx).err(),
            Err(error) => Some(self.read_failed(&error)),
        }
    }

    fn read_failed(&self, error: &TransportError) -> CloseReason {
        match error {
            TransportError::Closed => CloseReason::ClientClosed,
            TransportError::Io(_) => CloseReason::IoError,
            TransportError::FrameTooLarge { .. } => {
                tracing::debug!(client = self.client_id, peer = %self.peer, %error, "stratum v2 frame refused");
                self.shared.counters.protocol_error("sv2_frame_too_large");
                CloseReason::LineTooLong
            }
            _ => {
                tracing::debug!(client = self.client_id, peer = %self.peer, %error, "stratum v2 frame refused");
                self.shared.counters.protocol_error("sv2_malformed");
                CloseReason::MalformedFrame
            }
        }
    }

    /// Writes every channel's queued messages once what they confirm holds
    /// (each channel's events durable, its blocks stored).
    async fn flush(&mut self) -> Result<(), CloseReason> {
        for channel in &mut self.channels {
            for message in channel.take_outbox() {
                push_message(&mut self.writer, self.client_id, message)?;
            }
        }
        if !self.writer.has_pending() {
            return Ok(());
        }
        for channel in &mut self.channels {
            channel.settle().await?;
        }
        crate::session::write_unless_stopped(self.writer.flush(), &self.shared).await
    }

    fn push(&mut self, message: AnyMessageOwned) -> Result<(), CloseReason> {
        push_message(&mut self.writer, self.client_id, message)
    }

    /// A message built with a conversion that can fail only on sizes the
    /// pool never produces.
    fn push_built(
        &mut self,
        built: Result<AnyMessageOwned, tbg_sv2::binary_sv2::Error>,
    ) -> Result<(), CloseReason> {
        match built {
            Ok(message) => self.push(message),
            Err(error) => {
                tracing::error!(
                    client = self.client_id,
                    ?error,
                    "cannot build a stratum v2 message"
                );
                Err(CloseReason::IoError)
            }
        }
    }

    fn handle(
        &mut self,
        message: AnyMessageOwned,
        work_rx: &watch::Receiver<Option<Arc<CurrentWork>>>,
    ) -> Result<(), CloseReason> {
        let message = match message {
            AnyMessageOwned::Common(CommonMessagesOwned::SetupConnection(setup))
                if self.user_agent.is_none() =>
            {
                return self.setup_connection(&setup);
            }
            // Nothing before the setup (the specification's first message).
            _ if self.user_agent.is_none() => {
                self.shared.counters.protocol_error("sv2_no_setup");
                return Err(CloseReason::MalformedFrame);
            }
            AnyMessageOwned::Mining(message) => message,
            AnyMessageOwned::Extensions(ExtensionsOwned::ExtensionsNegotiation(
                ExtensionsNegotiationOwned::RequestExtensions(request),
            )) => return self.refuse_extensions(request),
            _ => return self.protocol_error("sv2_unexpected_message"),
        };
        match message {
            MiningOwned::OpenStandardMiningChannel(open) => self.open_channel(
                open.request_id,
                ChannelKind::Standard,
                open.user_identity.as_bytes(),
                open.nominal_hash_rate,
                open.max_target.to_array(),
                0,
                work_rx,
            ),
            MiningOwned::OpenExtendedMiningChannel(open) => self.open_channel(
                open.request_id,
                ChannelKind::Extended,
                open.user_identity.as_bytes(),
                open.nominal_hash_rate,
                open.max_target.to_array(),
                usize::from(open.min_extranonce_size),
                work_rx,
            ),
            MiningOwned::SubmitSharesStandard(submit) => self.submit(
                submit.channel_id,
                &V2Share {
                    sequence_number: submit.sequence_number,
                    job_id: submit.job_id,
                    nonce: submit.nonce,
                    ntime: submit.ntime,
                    version: submit.version,
                    extranonce: None,
                },
                work_rx,
            ),
            MiningOwned::SubmitSharesExtended(submit) => self.submit(
                submit.channel_id,
                &V2Share {
                    sequence_number: submit.sequence_number,
                    job_id: submit.job_id,
                    nonce: submit.nonce,
                    ntime: submit.ntime,
                    version: submit.version,
                    extranonce: Some(submit.extranonce.as_bytes()),
                },
                work_rx,
            ),
            MiningOwned::UpdateChannel(update) => {
                let floor = wire::difficulty_of(update.maximum_target.to_array());
                let channel_id = update.channel_id;
                let refusal = match self.channel(channel_id) {
                    Some(channel) => match channel.update_channel(floor, work_rx) {
                        Ok(()) => return Ok(()),
                        Err(code) => code,
                    },
                    None => mining_sv2::ERROR_CODE_UPDATE_CHANNEL_INVALID_CHANNEL_ID,
                };
                self.push_built(error_code(refusal).map(|error_code| {
                    mining(MiningOwned::UpdateChannelError(UpdateChannelErrorOwned {
                        channel_id,
                        error_code,
                    }))
                }))?;
                if refusal == mining_sv2::ERROR_CODE_UPDATE_CHANNEL_INVALID_CHANNEL_ID {
                    return self.protocol_error("sv2_unknown_channel");
                }
                Ok(())
            }
            MiningOwned::CloseChannel(close) => {
                if let Some(index) = self
                    .channels
                    .iter()
                    .position(|channel| channel.channel_id() == Some(close.channel_id))
                {
                    let mut channel = self.channels.swap_remove(index);
                    for message in channel.take_outbox() {
                        self.push(message)?;
                    }
                    channel.finish(CloseReason::ClientClosed);
                    if self.channels.is_empty() {
                        self.without_channel_since = Instant::now();
                    }
                }
                Ok(())
            }
            _ => self.protocol_error("sv2_unexpected_message"),
        }
    }

    /// No extension is served: each one asked for is answered unsupported
    /// (a proxy that requires one then knows, rather than waiting).
    fn refuse_extensions(
        &mut self,
        request: tbg_sv2::stratum_core::extensions_sv2::RequestExtensionsOwned,
    ) -> Result<(), CloseReason> {
        let reply = Seq064KOwned::new(Vec::new()).map(|required_extensions| {
            AnyMessageOwned::Extensions(ExtensionsOwned::ExtensionsNegotiation(
                ExtensionsNegotiationOwned::RequestExtensionsError(
                    tbg_sv2::stratum_core::extensions_sv2::RequestExtensionsErrorOwned {
                        request_id: request.request_id,
                        unsupported_extensions: request.requested_extensions,
                        required_extensions,
                    },
                ),
            ))
        });
        self.push_built(reply)
    }

    /// Counted; past the connection's allowance it closes.
    fn protocol_error(&mut self, label: &str) -> Result<(), CloseReason> {
        self.shared.counters.protocol_error(label);
        match self
            .limiter
            .protocol_error(&self.live.limits, Instant::now())
        {
            Verdict::Close(_) => Err(CloseReason::TooManyErrors),
            Verdict::Allow | Verdict::Refuse(_) => Ok(()),
        }
    }

    fn channel(&mut self, channel_id: u32) -> Option<&mut Box<Session>> {
        self.channels
            .iter_mut()
            .find(|channel| channel.channel_id() == Some(channel_id))
    }

    fn submit(
        &mut self,
        channel_id: u32,
        share: &V2Share<'_>,
        work_rx: &watch::Receiver<Option<Arc<CurrentWork>>>,
    ) -> Result<(), CloseReason> {
        let index = self
            .channels
            .iter()
            .position(|channel| channel.channel_id() == Some(channel_id));
        match index {
            Some(index) => {
                // Only a submit on an open channel keeps the connection.
                let now = Instant::now();
                self.last_activity = now;
                // One submit budget for the whole connection, as a V1
                // connection has for all its workers: 64 channels must not
                // journal 64 times what one connection may.
                let over_rate = self
                    .limiter
                    .request(RequestKind::Submit, &self.live.limits, now)
                    != Verdict::Allow;
                self.channels[index].submit_v2(share, over_rate, work_rx)
            }
            None => {
                let sequence_number = share.sequence_number;
                self.push_built(error_code("invalid-channel-id").map(|error_code| {
                    mining(MiningOwned::SubmitSharesError(
                        tbg_sv2::mining_sv2::SubmitSharesErrorOwned {
                            channel_id,
                            sequence_number,
                            error_code,
                        },
                    ))
                }))?;
                self.protocol_error("sv2_unknown_channel")
            }
        }
    }
}
