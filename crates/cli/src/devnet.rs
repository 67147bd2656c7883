//! `tbg devnet`: an embedded regtest node (Bitcoin Core's validation
//! engine), the pool against it, and optionally the built-in CPU miner.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::{Context, Result};
use tbg_config::Config;
use tbg_devnode::{DevNode, DevNodeOptions};

use crate::{reload, serve_until_shutdown, start_pool, stop_pool, ConfigArgs};

pub(crate) async fn run_devnet(
    mut config: Config,
    args: ConfigArgs,
    mut hangup: Option<tokio::signal::unix::Signal>,
    data_dir: Option<PathBuf>,
    (rpc, initial_blocks): (SocketAddr, u32),
    miner: Option<(Option<String>, Option<u64>)>,
) -> Result<()> {
    // Chain and journal live in the data dir; a temporary one when not given.
    let temp_dir = match &data_dir {
        Some(_) => None,
        None => Some(
            tempfile::Builder::new()
                .prefix("tbg-devnet-")
                .tempdir()
                .context("temporary data dir")?,
        ),
    };
    let base = data_dir
        .clone()
        .or_else(|| temp_dir.as_ref().map(|t| t.path().to_path_buf()))
        .unwrap_or_default();
    let journal_path = base.join("journal.db");
    config.journal.path = journal_path.clone();
    let block_dir = base.join("blocks");
    config.blocks.dir = block_dir.clone();
    let dashboard_state = base.join("dashboard-best.json");
    tracing::info!("starting the embedded regtest node (Bitcoin Core's validation engine)");
    let node = DevNode::start(DevNodeOptions {
        data_dir: Some(base.join("chain")),
        rpc_bind: rpc,
        initial_blocks,
        ..DevNodeOptions::default()
    })
    .await
    .context("embedded node")?;
    tracing::info!(
        rpc = %node.rpc_url,
        cookie = %node.cookie_path.display(),
        height = node.block_count(),
        "embedded node ready"
    );
    // The same changes again on each reload, so they do not read as edits.
    let stratum_bind = config.pool.bind.clone();
    let embedded_node = vec![tbg_config::NodeConfig {
        url: node.rpc_url.clone(),
        cookie_file: Some(node.cookie_path.clone()),
        ..tbg_config::NodeConfig::default()
    }];
    let devnet_overrides = move |config: &mut Config| {
        config.network = tbg_config::NetworkName::Regtest;
        config.network_from_node = false;
        config.pool.bind = stratum_bind.clone();
        config.journal.path = journal_path.clone();
        config.blocks.dir = block_dir.clone();
        config.web.state_file = dashboard_state.clone();
        config.nodes = embedded_node.clone();
        // CPU miners need tiny difficulties on regtest; ASICs ramp up by vardiff.
        if config.pool.mindiff >= 1.0 {
            config.pool.mindiff = 0.0001;
            config.pool.startdiff = config.pool.startdiff.min(0.001);
        }
    };
    devnet_overrides(&mut config);
    let mut reloader = reload::Reloader::new(
        args,
        true,
        reload::Role::Pool,
        config.clone(),
        Box::new(devnet_overrides),
    );
    let service = match start_pool(&config).await {
        Ok(service) => service,
        Err(error) => {
            node.shutdown().await;
            return Err(error);
        }
    };
    let stratum = service.pool.local_addr();
    let stratum = if stratum.ip().is_unspecified() {
        SocketAddr::from(([127, 0, 0, 1], stratum.port()))
    } else {
        stratum
    };
    let miner_task = miner.map(|(address, blocks)| {
        let address = address.unwrap_or_else(fresh_regtest_address);
        tokio::spawn(async move {
            tracing::info!(%address, pool = %stratum, "built-in CPU miner starting");
            let mut miner = tbg_miner::MinerConfig::new(stratum, format!("{address}.cpu"));
            miner.max_blocks = blocks;
            if let Err(error) = crate::miner::run_miner(miner).await {
                tracing::error!(error = %format!("{error:#}"), "built-in miner stopped");
            }
        })
    });
    match miner_task {
        Some(mut task) => {
            tokio::select! {
                _ = &mut task => {},
                _ = serve_until_shutdown(&service, &mut reloader, &mut hangup) => task.abort(),
            }
        }
        None => serve_until_shutdown(&service, &mut reloader, &mut hangup).await,
    }
    stop_pool(service).await;
    node.shutdown().await;
    Ok(())
}

fn fresh_regtest_address() -> String {
    use bitcoin::secp256k1::{rand, Secp256k1, SecretKey};
    let secp = Secp256k1::new();
    let secret = SecretKey::new(&mut rand::thread_rng());
    let key = bitcoin::CompressedPublicKey(secret.public_key(&secp));
    bitcoin::Address::p2wpkh(&key, bitcoin::Network::Regtest).to_string()
}
