//! Which network the nodes are on, asked before the pool starts: a ckpool
//! file names none (ckpool mines on whatever its node is), and an explicit
//! one must match the nodes, or every address check is wrong.

use std::time::Duration;

use anyhow::Result;
use tbg_config::{Config, ConfigError, NetworkName};
use tbg_node::RpcClient;

/// How long one node gets to answer at start.
const ASK_TIMEOUT: Duration = Duration::from_secs(3);
/// Longest wait between two rounds while no node answers.
const RETRY_MAX: Duration = Duration::from_secs(5);

/// Each node's `chain`, for the nodes that answered now (asked together:
/// a node that does not answer delays the start by [`ASK_TIMEOUT`] once).
async fn ask_nodes(config: &Config) -> Vec<(String, String)> {
    let mut asking = tokio::task::JoinSet::new();
    for endpoint in crate::settings::node_settings(config).endpoints {
        asking.spawn(async move {
            let url = endpoint.url.clone();
            let client = RpcClient::new(endpoint, ASK_TIMEOUT).ok()?;
            match client
                .call::<serde_json::Value>("getblockchaininfo", serde_json::json!([]))
                .await
            {
                Ok(answer) => {
                    let chain = answer["chain"].as_str().unwrap_or_default().to_owned();
                    Some((url, chain))
                }
                Err(error) => {
                    tracing::debug!(%url, %error, "getblockchaininfo for the network");
                    None
                }
            }
        });
    }
    let mut answers: Vec<(String, String)> =
        asking.join_all().await.into_iter().flatten().collect();
    // In the config's order of the nodes, for stable messages.
    let order: Vec<String> = crate::settings::node_settings(config)
        .endpoints
        .into_iter()
        .map(|e| e.url)
        .collect();
    answers.sort_by_key(|(url, _)| order.iter().position(|u| u == url));
    answers
}

/// Settles `config.network` against the nodes. With the network from the
/// node (a ckpool file): waits until a node answers, takes its chain, and
/// validates the config again for it. With an explicit network: a node on
/// another one is a config error; nodes that do not answer now are checked
/// by nobody (the pool serves its last work while its node is down).
pub async fn settle(config: &mut Config) -> Result<()> {
    let mut backoff = Duration::from_millis(500);
    loop {
        let answers = ask_nodes(config).await;
        if let Some(wrong) = answers
            .iter()
            .find(|(_, chain)| NetworkName::from_core_chain(chain).is_none())
        {
            return Err(ConfigError::new(
                "nodes",
                &wrong.0,
                format!(
                    "the node says its chain is {:?}, a network this pool does not know",
                    wrong.1
                ),
            )
            .into());
        }
        let networks: Vec<(String, NetworkName)> = answers
            .into_iter()
            .filter_map(|(url, chain)| Some((url, NetworkName::from_core_chain(&chain)?)))
            .collect();
        if config.network_from_node {
            if let Some((url, network)) = networks.first() {
                tracing::info!(%url, network = network.as_str(),
                    "the network is the node's (the ckpool config names none)");
                config.network = *network;
                config.network_from_node = false;
            } else {
                tracing::warn!(retry_in = ?backoff,
                    "the ckpool config names no network and no node answers getblockchaininfo yet: waiting for one");
                tokio::select! {
                    () = crate::shutdown_signal() => anyhow::bail!("stopped while waiting for a node"),
                    () = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(RETRY_MAX);
                continue;
            }
        } else if networks.is_empty() {
            tracing::warn!(
                network = config.network.as_str(),
                "no node answers now: their network is checked by none (the config's is used)"
            );
        }
        if let Some((url, network)) = networks.iter().find(|(_, n)| *n != config.network) {
            return Err(ConfigError::new(
                "network",
                config.network.as_str(),
                format!(
                    "node {url} is on {}: set network = \"{}\" (or remove the key from a ckpool file), or point the pool at a {} node",
                    network.as_str(),
                    network.as_str(),
                    config.network.as_str()
                ),
            )
            .into());
        }
        config.validate()?;
        return Ok(());
    }
}
