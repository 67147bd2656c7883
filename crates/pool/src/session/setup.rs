//! Setting a connection up: `mining.subscribe` (an extranonce1, resumed
//! when the miner asks for its last session), `mining.authorize` (the
//! payout address checked against the network, the worker's stats and
//! remembered difficulty, the first job) and `mining.configure` (version
//! rolling, BIP310), with the ASICBoost notice.

use super::*;

/// A worker authorized on a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Authorization {
    /// The session's first: its difficulty is set, its first job is due.
    First,
    /// One more worker of the session's address.
    Another,
    /// Already authorized here.
    Again,
}

/// Why a worker was not authorized.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum AuthorizeRefusal {
    /// Not an address of the pool's network (the reason).
    InvalidAddress(String),
    /// The session pays another address (one payout per connection).
    AnotherAddress,
    /// Past [`MAX_WORKERS_PER_CONNECTION`].
    TooManyWorkers,
}

impl Session {
    pub(super) fn subscribe(
        &mut self,
        request: &Request,
        user_agent: Option<String>,
        session_id: Option<String>,
        out: &mut String,
    ) -> Result<(), CloseReason> {
        if let Some(agent) = user_agent {
            self.user_agent = agent;
        }
        if self.allocation.is_none() {
            let now = Instant::now();
            match self.shared.extranonces.allocate(session_id.as_deref(), now) {
                Some(allocation) => {
                    // Same extranonce1, same headers: what the previous
                    // connection accepted stays a duplicate.
                    if allocation.resumed {
                        if let Some(seen) =
                            self.shared.extranonces.take_shares(&allocation.session_id)
                        {
                            self.shares.resume(seen);
                        }
                    }
                    self.allocation = Some(allocation);
                }
                None => {
                    out.push_str(&tbg_stratum::response_error(&request.id, 20, "server full"));
                    return Err(CloseReason::ServerFull);
                }
            }
        }
        let Some(allocation) = &self.allocation else {
            return Ok(());
        };
        let result = tbg_stratum::subscribe_result(
            &allocation.session_id,
            &hex::encode(&allocation.extranonce1),
            self.shared.settings.extranonce2_len,
        );
        out.push_str(&tbg_stratum::response_ok(&request.id, result));
        Ok(())
    }

    pub(super) fn authorize(
        &mut self,
        request: &Request,
        username: &str,
        out: &mut String,
        work_rx: &watch::Receiver<Option<Arc<CurrentWork>>>,
    ) {
        match self.authorize_worker(username, work_rx) {
            Ok(authorized) => {
                out.push_str(&tbg_stratum::response_ok(&request.id, Value::Bool(true)));
                if authorized == Authorization::First {
                    out.push_str(&tbg_stratum::set_difficulty(self.difficulty));
                    let work = work_rx.borrow().clone();
                    if let Some(work) = work {
                        self.push_job(&work, out);
                    }
                }
            }
            Err(refusal) => {
                let (code, message) = match &refusal {
                    AuthorizeRefusal::InvalidAddress(error) => (
                        RejectReason::InvalidAddress.code(),
                        format!("Invalid address: {error}"),
                    ),
                    AuthorizeRefusal::AnotherAddress => (
                        RejectReason::WorkerMismatch.code(),
                        "Worker mismatch: one payout address per connection".to_string(),
                    ),
                    AuthorizeRefusal::TooManyWorkers => (
                        RejectReason::Unauthorized.code(),
                        "Too many workers on this connection".to_string(),
                    ),
                };
                out.push_str(&tbg_stratum::response_error(&request.id, code, &message));
            }
        }
    }

    /// Authorizes `address[.worker]` on this session, whatever the
    /// protocol: the address checked against the network, the worker's
    /// stats attached; for the session's first worker its difficulty (one
    /// it earned before, else the start, raised to this session's floor and
    /// capped by the network's) and `miner_connected`. The caller sends
    /// the answer, and for [`Authorization::First`] the difficulty and the
    /// first job.
    pub(crate) fn authorize_worker(
        &mut self,
        username: &str,
        work_rx: &watch::Receiver<Option<Arc<CurrentWork>>>,
    ) -> Result<Authorization, AuthorizeRefusal> {
        let (address, worker) = split_address_worker(username);
        let worker = worker.unwrap_or("default").to_string();
        let payout = match tbg_work::parse_payout_address(address, self.shared.settings.network) {
            Ok(script) => script,
            Err(error) => {
                tracing::info!(client = self.client_id, %error, "authorize refused: invalid payout address");
                self.shared.counters.protocol_error("invalid_address");
                return Err(AuthorizeRefusal::InvalidAddress(error.to_string()));
            }
        };
        if let Some(existing) = &self.authorized {
            if existing.address != address {
                // Coinbase outputs are per connection: one payout address each.
                return Err(AuthorizeRefusal::AnotherAddress);
            }
            if existing.workers.iter().any(|(name, _)| *name == worker) {
                return Ok(Authorization::Again);
            }
            if existing.workers.len() >= MAX_WORKERS_PER_CONNECTION {
                // Each worker has stats kept for a day: bound what one connection can create.
                return Err(AuthorizeRefusal::TooManyWorkers);
            }
        }
        let now = Instant::now();
        let handle = self.shared.stats.attach(address, &worker, now);
        let first_authorize = self.authorized.is_none();
        match &mut self.authorized {
            Some(existing) => existing.workers.push((worker.clone(), handle)),
            None => {
                let user_sig = self.shared.user_sigs.get(address);
                self.shared.request_user_sig(address);
                self.authorized = Some(Authorized {
                    address: address.to_string(),
                    payout,
                    workers: vec![(worker.clone(), handle)],
                    user_sig,
                });
            }
        }
        if !first_authorize {
            self.announce_asicboost(&worker);
            return Ok(Authorization::Another);
        }
        self.shared.counters.miner_connected();
        // Difficulty: one this worker earned with its own shares on an
        // earlier connection, else the start difficulty; raised to what
        // this connection asked for (which stays with this connection);
        // capped by the network difficulty of the work and the maximum.
        let remembered = self.shared.difficulty_memory.recall(address, &worker, now);
        let seconds = self.shared.seconds(now);
        let start = self
            .start_hint
            .unwrap_or_else(|| self.shared.live().start_difficulty);
        let config = self.vardiff_config(start);
        let mut vardiff = match remembered {
            Some(earned) => Vardiff::resume(config, earned, seconds),
            None => Vardiff::new(config, seconds),
        };
        if let Some(network) = network_difficulty(work_rx) {
            vardiff.set_network_difficulty(network, seconds);
        }
        if let Some(floor) = self.suggested_difficulty {
            vardiff.suggest_difficulty(floor, seconds);
        }
        // The difficulty below is announced as the first, not a change.
        vardiff.settle();
        self.difficulty = vardiff.difficulty();
        self.vardiff = Some(vardiff);
        self.emit(EventData::MinerConnected {
            user: address.to_string(),
            worker: worker.clone(),
            client_id: self.client_id,
            ip: self.peer.ip().to_string(),
            useragent: self.user_agent.clone(),
            initial_diff: self.difficulty,
        });
        tracing::info!(client = self.client_id, peer = %self.peer, user = %address, %worker,
            difficulty = self.difficulty, useragent = %self.user_agent, "miner authorized");
        self.announce_asicboost(&worker);
        Ok(Authorization::First)
    }

    pub(super) fn configure(
        &mut self,
        request: &Request,
        extensions: &[String],
        params: &serde_json::Map<String, Value>,
        out: &mut String,
    ) {
        let parsed = match ConfigureRequest::from_parts(extensions, params) {
            Ok(parsed) => parsed,
            Err(reason) => {
                out.push_str(&tbg_stratum::response_reject(&request.id, reason));
                return;
            }
        };
        let mut response = ConfigureResponse::default();
        if let Some(rolling) = parsed.version_rolling {
            response.version_rolling_requested = true;
            let mask = rolling.negotiate(self.shared.settings.version_mask);
            if mask.count_ones() >= rolling.min_bit_count && mask != 0 {
                let first = self.asicboost_mask.is_none();
                self.shares.set_version_mask(Some(mask));
                self.asicboost_mask = Some(rolling.mask);
                response.version_mask = Some(mask);
                // Once per connection: a configure sent again changes the
                // mask, not the count. Workers already authorized hear of it
                // now; those authorized later, at their authorize (miners
                // usually configure first).
                if first {
                    self.shared.counters.asicboost_miner();
                    let workers: Vec<String> = self
                        .authorized
                        .iter()
                        .flat_map(|user| user.workers.iter().map(|(name, _)| name.clone()))
                        .collect();
                    for worker in workers {
                        self.announce_asicboost(&worker);
                    }
                }
            }
        }
        if let Some(minimum) = parsed.minimum_difficulty {
            // A floor like suggest_difficulty, for this connection only
            // (never remembered); applied at authorize when it comes first.
            self.suggested_difficulty = Some(
                self.suggested_difficulty
                    .map_or(minimum, |s| s.max(minimum)),
            );
            response.minimum_difficulty = Some(true);
        }
        out.push_str(&tbg_stratum::response_ok(
            &request.id,
            tbg_stratum::configure_result(&response),
        ));
    }

    /// `asicboost_detected` for `worker`, when this connection rolls versions.
    pub(super) fn announce_asicboost(&self, worker: &str) {
        let (Some(user), Some(miner_mask)) = (&self.authorized, self.asicboost_mask) else {
            return;
        };
        self.emit(EventData::AsicboostDetected {
            user: user.address.clone(),
            worker: worker.to_string(),
            pool_mask: format!("{:08x}", self.shared.settings.version_mask),
            miner_mask: format!("{miner_mask:08x}"),
        });
    }
}
