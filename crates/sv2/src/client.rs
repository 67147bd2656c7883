//! A Stratum V2 mining client: the handshake, `SetupConnection`, one
//! standard or extended channel, its jobs, and shares found by hashing on
//! the CPU. Tests and the load tool (`tbg loadtest --sv2-key`) drive it
//! against the pool; it checks nothing the pool should check for it.

use std::net::SocketAddr;
use std::time::Duration;

use bitcoin::{BlockHash, Target};
use stratum_core::binary_sv2::{B032Owned, Str0255Owned, U256Owned};
use stratum_core::common_messages_sv2::{Protocol, SetupConnectionOwned};
use stratum_core::mining_sv2::{
    OpenExtendedMiningChannelOwned, OpenStandardMiningChannelOwned, SubmitSharesExtendedOwned,
    SubmitSharesStandard, UpdateChannelOwned,
};
use stratum_core::parsers_sv2::{AnyMessageOwned, CommonMessagesOwned, MiningOwned};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;

use crate::transport::{self, FrameReader, FrameWriter, TransportError};
use crate::work::{coinbase_txid, merkle_root, HeaderFields};

/// The setup flag asking for version rolling (bit 2).
pub const REQUIRES_VERSION_ROLLING: u32 = 0b100;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error(transparent)]
    Transport(#[from] TransportError),
    #[error("{stage} refused: {code}")]
    Refused { stage: &'static str, code: String },
    #[error("unexpected message: {0}")]
    Unexpected(String),
    #[error("cannot encode: {0}")]
    Encode(String),
}

fn encode<T, E: std::fmt::Debug>(result: Result<T, E>) -> Result<T, ClientError> {
    result.map_err(|e| ClientError::Encode(format!("{e:?}")))
}

/// Which channel to open.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChannelChoice {
    Standard,
    Extended { min_extranonce_size: u16 },
}

#[derive(Debug, Clone)]
pub struct ClientConfig {
    pub user_identity: String,
    pub channel: ChannelChoice,
    /// Hashes per second claimed (0: let the pool choose).
    pub nominal_hash_rate: f32,
    /// The easiest target the device takes (little-endian; all 0xff: any).
    pub max_target: [u8; 32],
    pub setup_flags: u32,
    pub vendor: String,
}

impl ClientConfig {
    pub fn new(user_identity: impl Into<String>, channel: ChannelChoice) -> ClientConfig {
        ClientConfig {
            user_identity: user_identity.into(),
            channel,
            nominal_hash_rate: 0.0,
            max_target: [0xff; 32],
            setup_flags: REQUIRES_VERSION_ROLLING,
            vendor: "tbg-sv2-client".to_string(),
        }
    }
}

/// The channel the pool opened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpenedChannel {
    pub id: u32,
    pub group_id: u32,
    /// The share target (little-endian), as last set.
    pub target: [u8; 32],
    pub extranonce_prefix: Vec<u8>,
    /// Bytes the miner rolls (0 on a standard channel).
    pub extranonce_size: usize,
}

/// A job as the pool sent it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Job {
    pub id: u32,
    /// `None`: a future job, active once a `SetNewPrevHash` names it.
    pub min_ntime: Option<u32>,
    pub version: u32,
    pub kind: JobKind,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JobKind {
    Standard {
        merkle_root: [u8; 32],
    },
    Extended {
        merkle_path: Vec<[u8; 32]>,
        coinbase_prefix: Vec<u8>,
        coinbase_suffix: Vec<u8>,
    },
}

/// The tip the pool mines on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tip {
    pub job_id: u32,
    pub prev_hash: [u8; 32],
    pub min_ntime: u32,
    pub nbits: u32,
}

/// A share the client found, ready to submit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Share {
    pub job_id: u32,
    pub nonce: u32,
    pub ntime: u32,
    pub version: u32,
    pub extranonce: Vec<u8>,
    pub hash: BlockHash,
    pub is_block: bool,
}

/// The pool's answer to one share.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ShareAnswer {
    Accepted,
    Refused(String),
}

pub struct Sv2Client {
    reader: FrameReader<OwnedReadHalf>,
    writer: FrameWriter<OwnedWriteHalf>,
    pub channel: OpenedChannel,
    /// Jobs of this channel, newest last (at most 32 kept).
    pub jobs: Vec<Job>,
    pub tip: Option<Tip>,
    /// Answers read while waiting for something else: (sequence, answer).
    pub answers: Vec<(u32, ShareAnswer)>,
    next_sequence: u32,
}

fn str0255(text: &str) -> Result<Str0255Owned, ClientError> {
    encode(Str0255Owned::try_from(text.to_string()))
}

impl Sv2Client {
    /// Connects, checks the pool's certificate against `authority_key`
    /// (32 x-only bytes), sets up and opens one channel.
    pub async fn connect(
        addr: SocketAddr,
        authority_key: [u8; 32],
        config: &ClientConfig,
    ) -> Result<Sv2Client, ClientError> {
        let stream = TcpStream::connect(addr).await.map_err(TransportError::Io)?;
        Sv2Client::connect_over(stream, authority_key, config).await
    }

    /// As `connect`, over a stream already connected (a load tool binds
    /// its own source addresses).
    pub async fn connect_over(
        mut stream: TcpStream,
        authority_key: [u8; 32],
        config: &ClientConfig,
    ) -> Result<Sv2Client, ClientError> {
        let addr = stream.peer_addr().map_err(TransportError::Io)?;
        let _ = stream.set_nodelay(true);
        let (encrypt, decrypt) = transport::connect(&mut stream, authority_key).await?;
        let (read_half, write_half) = stream.into_split();
        let mut reader =
            FrameReader::new(read_half, decrypt, transport::CLIENT_MAX_INBOUND_PAYLOAD);
        let mut writer = FrameWriter::new(write_half, encrypt);
        writer
            .send(AnyMessageOwned::Common(
                CommonMessagesOwned::SetupConnection(SetupConnectionOwned {
                    protocol: Protocol::MiningProtocol,
                    min_version: 2,
                    max_version: 2,
                    flags: config.setup_flags,
                    endpoint_host: str0255(&addr.ip().to_string())?,
                    endpoint_port: addr.port(),
                    vendor: str0255(&config.vendor)?,
                    hardware_version: str0255("cpu")?,
                    firmware: str0255(env!("CARGO_PKG_VERSION"))?,
                    device_id: str0255("")?,
                }),
            ))
            .await?;
        match reader.next().await? {
            AnyMessageOwned::Common(CommonMessagesOwned::SetupConnectionSuccess(_)) => {}
            AnyMessageOwned::Common(CommonMessagesOwned::SetupConnectionError(error)) => {
                return Err(ClientError::Refused {
                    stage: "setup",
                    code: text(error.error_code.as_bytes()),
                })
            }
            other => return Err(ClientError::Unexpected(format!("{other:?}"))),
        }
        let open = match config.channel {
            ChannelChoice::Standard => {
                MiningOwned::OpenStandardMiningChannel(OpenStandardMiningChannelOwned {
                    request_id: 1,
                    user_identity: str0255(&config.user_identity)?,
                    nominal_hash_rate: config.nominal_hash_rate,
                    max_target: U256Owned::from(config.max_target),
                })
            }
            ChannelChoice::Extended {
                min_extranonce_size,
            } => MiningOwned::OpenExtendedMiningChannel(OpenExtendedMiningChannelOwned {
                request_id: 1,
                user_identity: str0255(&config.user_identity)?,
                nominal_hash_rate: config.nominal_hash_rate,
                max_target: U256Owned::from(config.max_target),
                min_extranonce_size,
            }),
        };
        writer.send(AnyMessageOwned::Mining(open)).await?;
        let channel = match reader.next().await? {
            AnyMessageOwned::Mining(MiningOwned::OpenStandardMiningChannelSuccess(ok)) => {
                OpenedChannel {
                    id: ok.channel_id,
                    group_id: ok.group_channel_id,
                    target: ok.target.to_array(),
                    extranonce_prefix: ok.extranonce_prefix.as_bytes().to_vec(),
                    extranonce_size: 0,
                }
            }
            AnyMessageOwned::Mining(MiningOwned::OpenExtendedMiningChannelSuccess(ok)) => {
                OpenedChannel {
                    id: ok.channel_id,
                    group_id: ok.group_channel_id,
                    target: ok.target.to_array(),
                    extranonce_prefix: ok.extranonce_prefix.as_bytes().to_vec(),
                    extranonce_size: usize::from(ok.extranonce_size),
                }
            }
            AnyMessageOwned::Mining(MiningOwned::OpenMiningChannelError(error)) => {
                return Err(ClientError::Refused {
                    stage: "open channel",
                    code: text(error.error_code.as_bytes()),
                })
            }
            other => return Err(ClientError::Unexpected(format!("{other:?}"))),
        };
        Ok(Sv2Client {
            reader,
            writer,
            channel,
            jobs: Vec::new(),
            tip: None,
            answers: Vec::new(),
            next_sequence: 0,
        })
    }

    /// Reads one message and applies it (jobs, tip, target, answers).
    pub async fn next_message(&mut self) -> Result<AnyMessageOwned, ClientError> {
        let message = self.reader.next().await?;
        if let AnyMessageOwned::Mining(mining) = &message {
            self.apply(mining);
        }
        Ok(message)
    }

    fn apply(&mut self, message: &MiningOwned) {
        match message {
            MiningOwned::NewMiningJob(job) => self.add_job(Job {
                id: job.job_id,
                min_ntime: job.min_ntime.clone().into_inner(),
                version: job.version,
                kind: JobKind::Standard {
                    merkle_root: job.merkle_root.to_array(),
                },
            }),
            MiningOwned::NewExtendedMiningJob(job) => self.add_job(Job {
                id: job.job_id,
                min_ntime: job.min_ntime.clone().into_inner(),
                version: job.version,
                kind: JobKind::Extended {
                    merkle_path: job
                        .merkle_path
                        .clone()
                        .into_inner()
                        .iter()
                        .map(|node| node.to_array())
                        .collect(),
                    coinbase_prefix: job.coinbase_tx_prefix.as_bytes().to_vec(),
                    coinbase_suffix: job.coinbase_tx_suffix.as_bytes().to_vec(),
                },
            }),
            MiningOwned::SetNewPrevHash(tip) => {
                self.tip = Some(Tip {
                    job_id: tip.job_id,
                    prev_hash: tip.prev_hash.to_array(),
                    min_ntime: tip.min_ntime,
                    nbits: tip.nbits,
                });
                // Jobs on the old tip are gone; the named future job is now
                // active from the tip's ntime.
                self.jobs.retain(|job| job.id == tip.job_id);
                if let Some(job) = self.jobs.first_mut() {
                    job.min_ntime = Some(tip.min_ntime);
                }
            }
            MiningOwned::SetTarget(target) => {
                self.channel.target = target.maximum_target.to_array()
            }
            MiningOwned::SubmitSharesSuccess(ok) => {
                self.answer_arrived(ok.last_sequence_number, ShareAnswer::Accepted)
            }
            MiningOwned::SubmitSharesError(error) => self.answer_arrived(
                error.sequence_number,
                ShareAnswer::Refused(text(error.error_code.as_bytes())),
            ),
            _ => {}
        }
    }

    fn answer_arrived(&mut self, sequence: u32, answer: ShareAnswer) {
        // Bounded: answers nobody waits for are the oldest.
        if self.answers.len() == 1024 {
            self.answers.remove(0);
        }
        self.answers.push((sequence, answer));
    }

    fn add_job(&mut self, job: Job) {
        if self.jobs.len() == 32 {
            self.jobs.remove(0);
        }
        self.jobs.push(job);
    }

    /// The job to mine: the newest one active on the current tip.
    pub fn active_job(&self) -> Option<&Job> {
        self.tip?;
        self.jobs.iter().rev().find(|job| job.min_ntime.is_some())
    }

    /// Reads until there is an active job.
    pub async fn wait_for_work(&mut self) -> Result<Job, ClientError> {
        loop {
            if let Some(job) = self.active_job() {
                return Ok(job.clone());
            }
            self.next_message().await?;
        }
    }

    /// Reads what the pool has already sent (a newer tip, a new target)
    /// until nothing more comes for `quiet`: a share found afterwards is
    /// on the newest work.
    pub async fn take_pending(&mut self, quiet: Duration) -> Result<(), ClientError> {
        while let Ok(read) = tokio::time::timeout(quiet, self.next_message()).await {
            read?;
        }
        Ok(())
    }

    /// Reads until the tip is `prev_hash` (internal byte order) and a job
    /// on it is active.
    pub async fn wait_for_tip(&mut self, prev_hash: [u8; 32]) -> Result<Job, ClientError> {
        loop {
            if self.tip.map(|tip| tip.prev_hash) == Some(prev_hash) {
                if let Some(job) = self.active_job() {
                    return Ok(job.clone());
                }
            }
            self.next_message().await?;
        }
    }

    /// The header fields of `job` for `extranonce` (ignored on a standard
    /// channel) before ntime, nonce and version are chosen.
    pub fn header_for(&self, job: &Job, extranonce: &[u8]) -> Option<HeaderFields> {
        let tip = self.tip?;
        let root = match &job.kind {
            JobKind::Standard { merkle_root } => *merkle_root,
            JobKind::Extended {
                merkle_path,
                coinbase_prefix,
                coinbase_suffix,
            } => merkle_root(
                coinbase_txid(
                    coinbase_prefix,
                    &self.channel.extranonce_prefix,
                    extranonce,
                    coinbase_suffix,
                ),
                merkle_path,
            ),
        };
        Some(HeaderFields {
            version: job.version,
            prev_hash: tip.prev_hash,
            merkle_root: root,
            ntime: job.min_ntime.unwrap_or(tip.min_ntime),
            nbits: tip.nbits,
            nonce: 0,
        })
    }

    /// Hashes nonces from `start` on the active job until one meets the
    /// channel's target (and, with `blocks = false`, is not a block: half
    /// of regtest's nonces are). `None` after `tries` nonces.
    pub fn find_share(
        &self,
        extranonce: &[u8],
        version_bits: u32,
        start: u32,
        tries: u32,
        blocks: bool,
    ) -> Option<Share> {
        let job = self.active_job()?;
        let mut header = self.header_for(job, extranonce)?;
        header.version |= version_bits;
        let target = Target::from_le_bytes(self.channel.target);
        for nonce in start..start.saturating_add(tries) {
            header.nonce = nonce;
            let hash = header.hash();
            if !target.is_met_by(hash) {
                continue;
            }
            let is_block = header.is_block();
            if is_block && !blocks {
                continue;
            }
            return Some(Share {
                job_id: job.id,
                nonce,
                ntime: header.ntime,
                version: header.version,
                extranonce: extranonce.to_vec(),
                hash,
                is_block,
            });
        }
        None
    }

    /// Submits a share; returns its sequence number.
    pub async fn submit(&mut self, share: &Share) -> Result<u32, ClientError> {
        let sequence = self.queue(share)?;
        self.flush().await?;
        Ok(sequence)
    }

    /// Sends what `queue` holds, in one write.
    pub async fn flush(&mut self) -> Result<(), ClientError> {
        Ok(self.writer.flush().await?)
    }

    /// Queues a share to go with the next `flush` (several submits in one
    /// write); returns its sequence number.
    pub fn queue(&mut self, share: &Share) -> Result<u32, ClientError> {
        let sequence_number = self.next_sequence;
        self.next_sequence = self.next_sequence.wrapping_add(1);
        let message = if self.channel.extranonce_size == 0 {
            MiningOwned::SubmitSharesStandard(SubmitSharesStandard {
                channel_id: self.channel.id,
                sequence_number,
                job_id: share.job_id,
                nonce: share.nonce,
                ntime: share.ntime,
                version: share.version,
            })
        } else {
            MiningOwned::SubmitSharesExtended(SubmitSharesExtendedOwned {
                channel_id: self.channel.id,
                sequence_number,
                job_id: share.job_id,
                nonce: share.nonce,
                ntime: share.ntime,
                version: share.version,
                extranonce: encode(B032Owned::try_from(share.extranonce.clone()))?,
            })
        };
        self.writer.push(AnyMessageOwned::Mining(message))?;
        Ok(sequence_number)
    }

    /// Submits and waits for the pool's answer to that share.
    pub async fn submit_and_wait(&mut self, share: &Share) -> Result<ShareAnswer, ClientError> {
        let sequence = self.submit(share).await?;
        self.answer(sequence).await
    }

    /// Waits for the answer to the share `sequence`: its own, or a
    /// success that acknowledges it with later shares (a pool may batch
    /// them: `SubmitSharesSuccess` names the last sequence it covers).
    pub async fn answer(&mut self, sequence: u32) -> Result<ShareAnswer, ClientError> {
        loop {
            if let Some(index) = self.answers.iter().position(|(seq, _)| *seq == sequence) {
                return Ok(self.answers.remove(index).1);
            }
            let covered = self
                .answers
                .iter()
                .any(|(last, answer)| *answer == ShareAnswer::Accepted && covers(*last, sequence));
            if covered {
                return Ok(ShareAnswer::Accepted);
            }
            self.next_message().await?;
        }
    }

    /// Tells the pool the device's rate and easiest target.
    pub async fn update_channel(
        &mut self,
        nominal_hash_rate: f32,
        maximum_target: [u8; 32],
    ) -> Result<(), ClientError> {
        self.writer
            .send(AnyMessageOwned::Mining(MiningOwned::UpdateChannel(
                UpdateChannelOwned {
                    channel_id: self.channel.id,
                    nominal_hash_rate,
                    maximum_target: U256Owned::from(maximum_target),
                },
            )))
            .await?;
        Ok(())
    }

    /// Sends any message (tests of the pool's refusals).
    pub async fn send(&mut self, message: AnyMessageOwned) -> Result<(), ClientError> {
        Ok(self.writer.send(message).await?)
    }
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Whether a success for `last` covers share `sequence`: at or before it,
/// in the wrapping order of sequence numbers.
pub fn covers(last: u32, sequence: u32) -> bool {
    last.wrapping_sub(sequence) < 1 << 31
}
