//! `tbg miner`: the CPU miner alone, against any Stratum V1 pool, over TCP
//! or TLS.

use anyhow::{Context, Result};

use crate::shutdown_signal;

/// `host:port` and the TLS settings of a `--pool` value (`stratum+ssl://`
/// or `stratum+tls://` for TLS; `stratum+tcp://` or no scheme for TCP).
pub(crate) fn miner_target<'a>(
    pool: &'a str,
    tls_ca: Option<&std::path::Path>,
) -> Result<(&'a str, Option<tbg_miner::MinerTls>)> {
    let (scheme, host_port) = pool.split_once("://").unwrap_or(("stratum+tcp", pool));
    let host_port = host_port.trim_end_matches('/');
    match scheme {
        "stratum+tcp" => {
            if tls_ca.is_some() {
                anyhow::bail!("--tls-ca is for a stratum+ssl:// pool; {pool} is plain TCP");
            }
            Ok((host_port, None))
        }
        "stratum+ssl" | "stratum+tls" => {
            let host = host_port
                .rsplit_once(':')
                .map_or(host_port, |(host, _)| host)
                .trim_start_matches('[')
                .trim_end_matches(']');
            let tls = match tls_ca {
                Some(ca) => tbg_miner::MinerTls::with_ca_file(ca, host)?,
                None => tbg_miner::MinerTls::with_system_roots(host)?,
            };
            Ok((host_port, Some(tls)))
        }
        other => anyhow::bail!(
            "--pool {pool}: unknown scheme {other}:// (stratum+tcp:// or stratum+ssl://)"
        ),
    }
}

pub(crate) async fn run_miner(config: tbg_miner::MinerConfig) -> Result<()> {
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let (event_tx, mut event_rx) = tokio::sync::mpsc::channel(256);
    let pool = config.pool;
    let miner = tokio::spawn(tbg_miner::run_miner(config, stop_rx, Some(event_tx)));
    let printer = tokio::spawn(async move {
        while let Some(event) = event_rx.recv().await {
            match event {
                tbg_miner::MinerEvent::ShareAccepted {
                    block_candidate: true,
                    hash,
                    ..
                } => {
                    tracing::info!(%hash, "miner: block found and accepted by the pool");
                }
                tbg_miner::MinerEvent::ShareRejected { reason, .. } => {
                    tracing::warn!(%reason, "miner: share rejected");
                }
                tbg_miner::MinerEvent::Difficulty(difficulty) => {
                    tracing::debug!(difficulty, "miner: new difficulty");
                }
                _ => {}
            }
        }
    });
    tokio::select! {
        result = miner => {
            let summary = result.context("miner task")?.with_context(|| format!("mining on {pool}"))?;
            tracing::info!(accepted = summary.accepted, rejected = summary.rejected, blocks = summary.block_candidates, "miner finished");
        }
        _ = shutdown_signal() => {
            let _ = stop_tx.send(true);
        }
    }
    printer.abort();
    Ok(())
}
