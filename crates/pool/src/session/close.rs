//! How a connection ends: at a graceful stop, the answers to what the miner
//! had already sent; then the accounting of the session (its extranonce
//! parked for a resume, its earned difficulty remembered, its workers'
//! `miner_disconnected`).

use super::*;

impl Session {
    /// After `client.reconnect` at a graceful stop: answers what the miner
    /// had already sent (its shares crossed the reconnect on the wire; one
    /// may be a block) until it closes the connection, at most
    /// [`STOP_LINGER`]. No new work is sent.
    pub(super) async fn answer_until_closed<S: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        stream: &mut BufReader<S>,
        line: &mut Vec<u8>,
        out: &mut String,
        work_rx: &watch::Receiver<Option<Arc<CurrentWork>>>,
    ) {
        let until = Instant::now() + STOP_LINGER;
        let max_line = self.shared.settings.max_line_bytes;
        let stop = self.shared.sessions_stop.clone();
        loop {
            // A line already buffered is still taken past `until`
            // (`timeout_at` polls the read first): it may be a block. Once
            // the stop has told sessions to end, none is.
            if stop.is_cancelled() {
                return;
            }
            let read = tokio::select! {
                read = tokio::time::timeout_at(until.into(), read_line_limited(stream, line, max_line)) => read,
                () = stop.cancelled() => return,
            };
            let Ok(Ok(LineRead::Line(at))) = read else {
                return;
            };
            let keep = self.take_line(stream, line, at, out, work_rx);
            if self.flush(stream, out).await.is_err() || keep.is_err() {
                return;
            }
        }
    }

    /// Accounting when the connection ends.
    pub(crate) fn finish(&mut self, reason: CloseReason) {
        let now = Instant::now();
        if let Some(allocation) = &self.allocation {
            // Parked for a connection that resumes this session.
            let shares = std::mem::take(&mut self.shares).into_seen();
            // Only a session that authorized keeps its extranonce1 for a
            // resume: connect/subscribe/close loops reserve nothing. A V2
            // channel never resumes (the protocol has no session id).
            self.shared.extranonces.release_with_shares(
                &allocation.session_id,
                now,
                self.authorized.is_some() && self.wire.is_none(),
                shares,
            );
        }
        let authorized = self.authorized.take();
        let connected_s = now.saturating_duration_since(self.connected_at).as_secs();
        match &authorized {
            // One info line per miner: its "miner authorized" and this.
            Some(user) => tracing::info!(client = self.client_id, peer = %self.peer,
                user = %user.address, shares = self.shares_session, connected_s,
                ?reason, "connection closed"),
            // Health probes, scanners, refused logins: debug only.
            None => tracing::debug!(client = self.client_id, peer = %self.peer,
                connected_s, ?reason, "connection closed before authorizing"),
        }
        if let Some(user) = authorized {
            self.shared.counters.miner_disconnected();
            // What this connection earned, not what it was set to.
            let earned = self.vardiff.as_ref().and_then(Vardiff::earned_difficulty);
            for (worker, handle) in &user.workers {
                if let Some(earned) = earned {
                    self.shared
                        .difficulty_memory
                        .remember(&user.address, worker, earned, now);
                }
                StatsRegistry::detach(handle);
                self.emit(EventData::MinerDisconnected {
                    user: user.address.clone(),
                    worker: worker.clone(),
                    client_id: self.client_id,
                    ip: self.peer.ip().to_string(),
                    session_duration: now
                        .saturating_duration_since(self.connected_at)
                        .as_secs_f64(),
                    shares_session: self.shares_session,
                });
            }
        }
    }
}
