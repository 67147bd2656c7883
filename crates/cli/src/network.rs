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

/// One node's answer: its `chain`, or why it gave none.
type Answer = (String, Result<String, String>);

/// Each node's `chain` or error, asked together (a node that does not
/// answer delays the start by [`ASK_TIMEOUT`] once), in the config's order.
async fn ask_nodes(config: &Config) -> Vec<Answer> {
    let mut asking = tokio::task::JoinSet::new();
    for (index, endpoint) in crate::settings::node_settings(config)
        .endpoints
        .into_iter()
        .enumerate()
    {
        asking.spawn(async move {
            let url = endpoint.url.clone();
            let answer = match RpcClient::new(endpoint, ASK_TIMEOUT) {
                Ok(client) => client
                    .call::<serde_json::Value>("getblockchaininfo", serde_json::json!([]))
                    .await
                    .map(|answer| answer["chain"].as_str().unwrap_or_default().to_owned())
                    .map_err(|error| error.to_string()),
                Err(error) => Err(error.to_string()),
            };
            (index, (url, answer))
        });
    }
    let mut answers = asking.join_all().await;
    answers.sort_by_key(|(index, _)| *index);
    answers.into_iter().map(|(_, answer)| answer).collect()
}

/// Settles `config.network` against the nodes. With the network from the
/// node (a ckpool file): waits until a node answers, takes its chain, and
/// validates the config again for it. With an explicit network: a node on
/// another one is a config error; nodes that do not answer now are checked
/// by nobody (the pool serves its last work while its node is down).
/// False when stopped (SIGTERM) while waiting.
pub async fn settle(config: &mut Config) -> Result<bool> {
    let mut backoff = Duration::from_millis(500);
    loop {
        let answers = ask_nodes(config).await;
        let mut networks: Vec<(String, NetworkName)> = Vec::new();
        let mut errors: Vec<String> = Vec::new();
        for (url, answer) in answers {
            match answer {
                Ok(chain) => match NetworkName::from_core_chain(&chain) {
                    Some(network) => networks.push((url, network)),
                    None => {
                        return Err(ConfigError::new(
                            "nodes",
                            &url,
                            format!("the node says its chain is {chain:?}, a network this pool does not know"),
                        )
                        .into())
                    }
                },
                Err(error) => errors.push(format!("{url}: {error}")),
            }
        }
        if config.network_from_node {
            if let Some((url, network)) = networks.first() {
                tracing::info!(%url, network = network.as_str(),
                    "the network is the node's (the ckpool config names none)");
                config.network = *network;
                config.network_from_node = false;
            } else {
                tracing::warn!(retry_in = ?backoff, nodes = ?errors,
                    "the ckpool config names no network and no node answers getblockchaininfo yet: waiting for one");
                tokio::select! {
                    () = crate::shutdown_signal() => return Ok(false),
                    () = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(RETRY_MAX);
                continue;
            }
        } else if networks.is_empty() {
            tracing::warn!(network = config.network.as_str(), nodes = ?errors,
                "no node answers now: their network is checked by none (the config's is used)");
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
        return Ok(true);
    }
}
