//! A V2 connection's `SetupConnection` and channel opens: what it may ask
//! for, the answers, and each open channel's session.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tbg_sv2::common_messages_sv2::{
    has_version_rolling, has_work_selection, Protocol, SetupConnectionErrorOwned,
    SetupConnectionOwned, SetupConnectionSuccess,
};
use tbg_sv2::mining_sv2::{
    self, OpenExtendedMiningChannelSuccessOwned, OpenMiningChannelErrorOwned,
    OpenStandardMiningChannelSuccessOwned,
};
use tbg_sv2::parsers_sv2::{AnyMessageOwned, CommonMessagesOwned, MiningOwned};
use tokio::sync::watch;

use super::{Connection, GROUP_CHANNEL_ID, MAX_EXTRANONCE, OPENS_PER_MINUTE};
use crate::session::v2::{ChannelRequest, OpenRefusal};
use crate::session::{CloseReason, Session, MAX_WORKERS_PER_CONNECTION};
use crate::sv2::wire::{self, error_code, extranonce_prefix, mining, ChannelKind};
use crate::work_source::CurrentWork;

impl Connection {
    pub(super) fn setup_connection(
        &mut self,
        setup: &SetupConnectionOwned,
    ) -> Result<(), CloseReason> {
        let refusal = if setup.protocol != Protocol::MiningProtocol {
            Some((0, "unsupported-protocol"))
        } else if setup.get_version(2, 2).is_none() {
            Some((0, "protocol-version-mismatch"))
        } else if has_work_selection(setup.flags) {
            // Job declaration is out of scope: the pool chooses the work.
            Some((0b10, "unsupported-feature-flags"))
        } else {
            None
        };
        if let Some((flags, code)) = refusal {
            tracing::info!(client = self.client_id, peer = %self.peer, code, "stratum v2 setup refused");
            self.push_built(error_code(code).map(|error_code| {
                AnyMessageOwned::Common(CommonMessagesOwned::SetupConnectionError(
                    SetupConnectionErrorOwned { flags, error_code },
                ))
            }))?;
            return Err(CloseReason::MalformedFrame);
        }
        let text = |bytes: &[u8]| String::from_utf8_lossy(bytes).into_owned();
        let agent = format!(
            "{} {} {}",
            text(setup.vendor.as_bytes()),
            text(setup.hardware_version.as_bytes()),
            text(setup.firmware.as_bytes())
        );
        self.user_agent = Some(tbg_stratum::sanitize_printable(
            agent.trim(),
            tbg_stratum::MAX_USER_AGENT_CHARS,
        ));
        self.version_rolling = has_version_rolling(setup.flags);
        self.push(AnyMessageOwned::Common(
            CommonMessagesOwned::SetupConnectionSuccess(SetupConnectionSuccess {
                used_version: 2,
                flags: 0,
            }),
        ))
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) fn open_channel(
        &mut self,
        request_id: u32,
        kind: ChannelKind,
        user_identity: &[u8],
        nominal_hash_rate: f32,
        max_target: [u8; 32],
        min_extranonce_size: usize,
        work_rx: &watch::Receiver<Option<Arc<CurrentWork>>>,
    ) -> Result<(), CloseReason> {
        let now = Instant::now();
        let refuse = |connection: &mut Connection, code: &str| {
            connection.push_built(error_code(code).map(|error_code| {
                mining(MiningOwned::OpenMiningChannelError(
                    OpenMiningChannelErrorOwned {
                        request_id,
                        error_code,
                    },
                ))
            }))
        };
        // Opens have a budget of their own: a proxy opens one channel per
        // miner behind it, at once, which V1's authorize limit (one miner
        // per connection) would refuse and then count as abuse.
        if now.saturating_duration_since(self.opens.0) >= Duration::from_secs(60) {
            self.opens = (now, 0);
        }
        self.opens.1 += 1;
        if self.opens.1 > OPENS_PER_MINUTE {
            self.shared.guard.refused(
                &self.shared.counters,
                crate::limits::LimitKind::AuthorizeRate,
                self.peer,
                Some(self.client_id),
                now,
            );
            return refuse(self, "rate-limited");
        }
        if self.next_channel_id == u32::MAX {
            return refuse(
                self,
                mining_sv2::ERROR_CODE_OPEN_MINING_CHANNEL_CHANNEL_CAPACITY_EXHAUSTED,
            );
        }
        if self.channels.len() >= MAX_WORKERS_PER_CONNECTION {
            return refuse(
                self,
                mining_sv2::ERROR_CODE_OPEN_MINING_CHANNEL_CHANNEL_CAPACITY_EXHAUSTED,
            );
        }
        let extranonce1_len = self.shared.settings.extranonce1_len;
        let extranonce2_len = match kind {
            ChannelKind::Standard => self.shared.settings.extranonce2_len,
            ChannelKind::Extended => min_extranonce_size.max(self.shared.settings.extranonce2_len),
        };
        if extranonce1_len + extranonce2_len > MAX_EXTRANONCE {
            return refuse(
                self,
                mining_sv2::ERROR_CODE_OPEN_MINING_CHANNEL_MIN_EXTRANONCE_SIZE_TOO_LARGE,
            );
        }
        let identity = String::from_utf8_lossy(user_identity);
        if identity.chars().any(tbg_stratum::is_unsafe_in_names) {
            self.shared.counters.protocol_error("invalid_address");
            return refuse(
                self,
                mining_sv2::ERROR_CODE_OPEN_MINING_CHANNEL_UNKNOWN_USER,
            );
        }
        let channel_id = self.next_channel_id;
        self.next_channel_id += 1;
        let request = ChannelRequest {
            channel_id,
            kind,
            user_identity: &identity,
            user_agent: self.user_agent.as_deref().unwrap_or_default(),
            nominal_hash_rate,
            min_difficulty: wire::difficulty_of(max_target),
            extranonce2_len,
            version_rolling: self.version_rolling,
        };
        let client_id = self.shared.next_client_id();
        let mut channel = Session::for_channel(self.shared.clone(), client_id, self.peer, &request);
        let opened = channel.open_channel(&request, work_rx, |extranonce1, target| {
            let target = tbg_sv2::binary_sv2::U256Owned::from(target);
            Ok(mining(match kind {
                ChannelKind::Extended => MiningOwned::OpenExtendedMiningChannelSuccess(
                    OpenExtendedMiningChannelSuccessOwned {
                        request_id,
                        channel_id,
                        target,
                        extranonce_size: extranonce2_len as u16,
                        extranonce_prefix: extranonce_prefix(extranonce1)?,
                        group_channel_id: GROUP_CHANNEL_ID,
                    },
                ),
                ChannelKind::Standard => {
                    // The standard channel's whole extranonce is the pool's.
                    let mut full = extranonce1.to_vec();
                    full.resize(extranonce1.len() + extranonce2_len, 0);
                    MiningOwned::OpenStandardMiningChannelSuccess(
                        OpenStandardMiningChannelSuccessOwned {
                            request_id,
                            channel_id,
                            target,
                            extranonce_prefix: extranonce_prefix(&full)?,
                            group_channel_id: GROUP_CHANNEL_ID,
                        },
                    )
                }
            }))
        });
        match opened {
            Ok(()) => {
                self.last_activity = now;
                self.channels.push(channel);
                Ok(())
            }
            Err(refusal) => {
                if let OpenRefusal::UnknownUser(reason) = &refusal {
                    tracing::info!(client = client_id, peer = %self.peer, %reason,
                        "stratum v2 channel refused: invalid user identity");
                }
                channel.finish(CloseReason::ClientClosed);
                refuse(self, refusal.code())
            }
        }
    }
}
