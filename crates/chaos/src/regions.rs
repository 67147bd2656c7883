//! Three regions as an operator runs them, each on a host of its own
//! ([`crate::netns`]): `tbg devnet` (the pool and its own embedded kernel
//! node), one server of a 3-server NATS JetStream cluster, and on the
//! relays `tbg publisher`. The primary (host 0) also has the collector
//! into its PostgreSQL and Redis, and `tbg health-monitor` watches all of
//! them from the harness.
//!
//! The embedded node has no peer-to-peer network, so [`Gossip`] plays it
//! (`gossip.rs`), never across a cut.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;
use tbg_node::{NodeAuth, NodeEndpoint, RpcClient};
use tbg_testkit::{PgServer, RedisServer};

use crate::gossip::Gossip;
use crate::ledger::{self, JournaledEvent};
use crate::netns::Wan;
use crate::process::ManagedProcess;
use crate::stack::http_get;
use crate::{wait_until, ChaosError};

/// The regions, primary first.
pub const REGION_NAMES: [&str; 3] = ["us-east", "eu-west", "ap-south"];
/// Ports on every host (each host has its own port space).
const STRATUM_PORT: u16 = 3333;
const HTTP_PORT: u16 = 9100;
const RPC_PORT: u16 = 18443;
const RELAY_PORT: u16 = 8881;
const NATS_PORT: u16 = 4222;
const NATS_CLUSTER_PORT: u16 = 6222;
const SECRET: &str = "the chaos suite's relay secret, long enough";

/// The link's timing, as `[region]` takes it.
#[derive(Debug, Clone)]
pub struct RegionsOptions {
    pub tbg: PathBuf,
    pub heartbeat_s: u64,
    pub failover_timeout_s: u64,
    pub failback_after_s: u64,
}

/// One region's host and its processes.
pub struct Region {
    pub name: &'static str,
    pub index: usize,
    /// `tbg devnet`: pool and node, the "host" of the region.
    pub pool: ManagedProcess,
    /// `tbg publisher` (relays only).
    pub publisher: Option<ManagedProcess>,
    pub nats: ManagedProcess,
    /// Where miners connect (over the management link).
    pub stratum: SocketAddr,
    /// `/status`, `/metrics`, `/health`.
    pub http: SocketAddr,
    pub journal_path: PathBuf,
    pub node: RpcClient,
}

pub struct Regions {
    // Field order is drop order: processes, then the gossip, the hosts,
    // the servers, the files.
    pub regions: Vec<Region>,
    pub collector: ManagedProcess,
    pub monitor: ManagedProcess,
    pub monitor_addr: SocketAddr,
    pub gossip: Gossip,
    pub wan: Wan,
    pub pg: PgServer,
    pub redis: RedisServer,
    pub dir: tempfile::TempDir,
}

fn region_config(
    dir: &Path,
    wan: &Wan,
    index: usize,
    options: &RegionsOptions,
    sinks: &(String, String),
) -> String {
    let name = REGION_NAMES[index];
    let host = &wan.hosts[index];
    let primary = &wan.hosts[0];
    let nats_urls: Vec<String> = std::iter::once(index)
        .chain((0..wan.hosts.len()).filter(|i| *i != index))
        .map(|i| format!("nats://{}:{NATS_PORT}", wan.hosts[i].wan_ip))
        .collect();
    let role = if index == 0 {
        format!(
            "relay_bind = \"{}:{RELAY_PORT}\"\nrelay_secret = \"{SECRET}\"\n",
            primary.wan_ip
        )
    } else {
        format!(
            "mode = \"relay\"\nprimary_url = \"{}:{RELAY_PORT}\"\nrelay_secret = \"{SECRET}\"\n",
            primary.wan_ip
        )
    };
    format!(
        r#"network = "regtest"
[pool]
mindiff = 0.0001
startdiff = 0.0001
blockpoll_ms = 100
share_interval_s = 0.5
# The suite's event load submits invalid shares on purpose.
max_invalid_shares_per_minute = 1000000
max_submits_per_minute = 1000000
# The suite's miners come over the management link, as a farm would.
allow_list = ["{harness}"]
[events]
socket_path = "{dir}/{name}.sock"
region = "{name}"
[journal]
path = "{dir}/{name}/journal.db"
[blocks]
retry_max_ms = 1000
follow_interval_s = 1
[metrics]
bind = "0.0.0.0:{HTTP_PORT}"
collector_bind = "127.0.0.1:0"
[collector]
postgres_url = "{pg}"
redis_url = "{redis}"
batch_wait_ms = 100
[nats]
url = "{nats}"
replicas = 3
# A lost acked message is sent again within the scenarios' convergence wait.
receipts_interval_s = 2
resend_after_s = 10
[region]
instance_id = {instance}
heartbeat_s = {heartbeat}
failover_timeout_s = {timeout}
failback_after_s = {failback}
{role}"#,
        harness = host.harness_ip,
        dir = dir.display(),
        pg = sinks.0,
        redis = sinks.1,
        nats = nats_urls.join(","),
        instance = index + 1,
        heartbeat = options.heartbeat_s,
        timeout = options.failover_timeout_s,
        failback = options.failback_after_s,
    )
}

fn nats_config(dir: &Path, wan: &Wan, index: usize) -> String {
    let routes: Vec<String> = wan
        .hosts
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != index)
        .map(|(_, host)| format!("\"nats://{}:{NATS_CLUSTER_PORT}\"", host.wan_ip))
        .collect();
    format!(
        r#"server_name: "{name}"
listen: "0.0.0.0:{NATS_PORT}"
client_advertise: "{ip}:{NATS_PORT}"
# A cut drops packets without closing anything: with the default 2 min the
# routes would stay up, dead, and TCP's retransmission backoff would hold
# the cluster for most of a minute after the cut heals. 2 s x 3 unanswered
# pings closes them; the routes are redialled every second.
ping_interval: "2s"
ping_max: 3
jetstream {{
  store_dir: "{dir}/nats-{name}"
}}
cluster {{
  name: "tbg-chaos"
  listen: "0.0.0.0:{NATS_CLUSTER_PORT}"
  routes: [{routes}]
  # Clients keep to the servers they were given: the health monitor in the
  # root namespace reaches the management addresses, not the WAN ones.
  no_advertise: true
}}
"#,
        name = REGION_NAMES[index],
        ip = wan.hosts[index].wan_ip,
        dir = dir.display(),
        routes = routes.join(", "),
    )
}

/// A process inside host `index`.
fn in_host(
    wan: &Wan,
    index: usize,
    name: &str,
    program: &Path,
    args: &[&str],
    log_dir: &Path,
) -> ManagedProcess {
    let (ip, args) = wan.command(index, program, args);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    ManagedProcess::new(name, &ip, &args, log_dir)
}

impl Regions {
    pub async fn start(options: RegionsOptions) -> Result<Regions, ChaosError> {
        // CHAOS_KEEP=1 keeps the configs, journals and logs for a post-mortem.
        let dir = tempfile::Builder::new()
            .prefix("tbg-regions-")
            .disable_cleanup(std::env::var("CHAOS_KEEP").is_ok_and(|v| v == "1"))
            .tempdir()
            .map_err(|e| ChaosError::io("temp dir", e))?;
        let wan = Wan::create(REGION_NAMES.len())?;
        let (pg, redis) = crate::stack::start_sinks().await?;
        let sinks = (pg.conninfo(), redis.url());
        let mut regions = Vec::new();
        for (index, name) in REGION_NAMES.into_iter().enumerate() {
            let host = wan.hosts[index].clone();
            let config = dir.path().join(format!("{name}.toml"));
            write(
                &config,
                &region_config(dir.path(), &wan, index, &options, &sinks),
            )?;
            let nats_conf = dir.path().join(format!("nats-{name}.conf"));
            write(&nats_conf, &nats_config(dir.path(), &wan, index))?;
            let nats_conf = nats_conf.to_string_lossy().into_owned();
            let nats = in_host(
                &wan,
                index,
                &format!("nats-{name}"),
                &tbg_testkit::nats_server_binary(),
                &["-c", &nats_conf],
                dir.path(),
            );
            let config_arg = config.to_string_lossy().into_owned();
            let data_dir = dir.path().join(name);
            let data_arg = data_dir.to_string_lossy().into_owned();
            let stratum_bind = format!("0.0.0.0:{STRATUM_PORT}");
            let rpc_bind = format!("0.0.0.0:{RPC_PORT}");
            // Relays' nodes start at genesis and take the primary's chain
            // from the gossip: one chain, as peered nodes have.
            let initial_blocks = if index == 0 { "110" } else { "0" };
            let pool = in_host(
                &wan,
                index,
                name,
                &options.tbg,
                &[
                    "devnet",
                    "--config",
                    &config_arg,
                    "--stratum",
                    &stratum_bind,
                    "--rpc",
                    &rpc_bind,
                    "--data-dir",
                    &data_arg,
                    "--initial-blocks",
                    initial_blocks,
                ],
                dir.path(),
            );
            let publisher = (index > 0).then(|| {
                in_host(
                    &wan,
                    index,
                    &format!("publisher-{name}"),
                    &options.tbg,
                    &["publisher", "--config", &config_arg],
                    dir.path(),
                )
            });
            let node = node_client(&host, &data_dir)?;
            regions.push(Region {
                name,
                index,
                pool,
                publisher,
                nats,
                stratum: SocketAddr::from((host.mgmt_ip, STRATUM_PORT)),
                http: SocketAddr::from((host.mgmt_ip, HTTP_PORT)),
                journal_path: data_dir.join("journal.db"),
                node,
            });
        }
        for region in &mut regions {
            region.nats.spawn()?;
        }
        for region in &mut regions {
            region.pool.spawn()?;
        }
        let primary_config = dir.path().join(format!("{}.toml", REGION_NAMES[0]));
        let collector = ManagedProcess::new(
            "collector",
            &options.tbg,
            &["collector", "--config", &primary_config.to_string_lossy()],
            dir.path(),
        );
        let monitor_port = tbg_testkit::free_port();
        let monitor_config = dir.path().join("monitor.toml");
        let nats_mgmt: Vec<String> = wan
            .hosts
            .iter()
            .map(|host| format!("nats://{}:{NATS_PORT}", host.mgmt_ip))
            .collect();
        let mut monitor_toml = format!(
            "network = \"regtest\"\n[health_monitor]\nnats_url = \"{}\"\nbind = \"127.0.0.1:{monitor_port}\"\ninterval_s = 1\ntimeout_s = 1\n",
            nats_mgmt.join(",")
        );
        for region in &regions {
            monitor_toml.push_str(&format!(
                "[[health_monitor.regions]]\nname = \"{}\"\nurl = \"http://{}\"\n",
                region.name, region.http
            ));
        }
        write(&monitor_config, &monitor_toml)?;
        let monitor = ManagedProcess::new(
            "health-monitor",
            &options.tbg,
            &[
                "health-monitor",
                "--config",
                &monitor_config.to_string_lossy(),
            ],
            dir.path(),
        );
        let gossip_nodes = wan
            .hosts
            .iter()
            .zip(REGION_NAMES)
            .map(|(host, name)| node_client(host, &dir.path().join(name)))
            .collect::<Result<Vec<_>, _>>()?;
        let gossip = Gossip::start(gossip_nodes);
        let mut set = Regions {
            regions,
            collector,
            monitor,
            monitor_addr: SocketAddr::from(([127, 0, 0, 1], monitor_port)),
            gossip,
            wan,
            pg,
            redis,
            dir,
        };
        for index in 0..set.regions.len() {
            set.wait_http(index, Duration::from_secs(90)).await?;
        }
        for region in &mut set.regions {
            if let Some(publisher) = &mut region.publisher {
                publisher.spawn()?;
            }
        }
        set.collector.spawn()?;
        set.monitor.spawn()?;
        Ok(set)
    }

    /// Waits until region `index` answers `/status`.
    pub async fn wait_http(&self, index: usize, timeout: Duration) -> Result<(), ChaosError> {
        let addr = self.regions[index].http;
        let what = format!("{} to answer /status", self.regions[index].name);
        let deadline = std::time::Instant::now() + timeout;
        while std::time::Instant::now() < deadline {
            if matches!(
                http_get(addr, "/status", Duration::from_secs(2)).await,
                Ok((200, _))
            ) {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Err(ChaosError::Timeout(
            timeout,
            format!("{what}; log: {}", self.regions[index].pool.log_tail(15)),
        ))
    }

    /// Region `index`'s `/status`, if it answers.
    pub async fn status(&self, index: usize) -> Option<Value> {
        let (code, body) = http_get(self.regions[index].http, "/status", Duration::from_secs(2))
            .await
            .ok()?;
        (code == 200).then(|| serde_json::from_str(&body).ok())?
    }

    /// The relay link's state of region `index` (`starting`, `primary`, `local`).
    pub async fn source(&self, index: usize) -> Option<String> {
        let status = self.status(index).await?;
        status["region"]["relay_link"]["source"]
            .as_str()
            .map(str::to_owned)
    }

    /// The monitor's `/health` document.
    pub async fn monitor_health(&self) -> Option<Value> {
        let (_, body) = http_get(self.monitor_addr, "/health", Duration::from_secs(2))
            .await
            .ok()?;
        serde_json::from_str(&body).ok()
    }

    /// Waits until every relay mines the primary's templates.
    pub async fn wait_relays_on_primary(&self, timeout: Duration) -> Result<(), ChaosError> {
        for index in 1..self.regions.len() {
            let deadline = std::time::Instant::now() + timeout;
            while self.source(index).await.as_deref() != Some("primary") {
                if std::time::Instant::now() >= deadline {
                    return Err(ChaosError::Timeout(
                        timeout,
                        format!(
                            "{} on the primary's work; status {:?}; log: {}",
                            self.regions[index].name,
                            self.status(index).await.map(|s| s["region"].clone()),
                            self.regions[index].pool.log_tail(10)
                        ),
                    ));
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        Ok(())
    }

    /// Cuts host `index` off the WAN; the gossip stops at the cut too.
    pub fn isolate(&self, index: usize) -> Result<(), ChaosError> {
        self.gossip.set_cut(index, true);
        self.wan.isolate(index)
    }

    pub fn rejoin(&self, index: usize) -> Result<(), ChaosError> {
        self.wan.rejoin(index)?;
        self.gossip.set_cut(index, false);
        Ok(())
    }

    /// Every event each region journaled itself (not ingested ones).
    pub fn own_events(&self) -> Result<Vec<JournaledEvent>, ChaosError> {
        let mut all = Vec::new();
        for region in &self.regions {
            let events = ledger::journal_events(&region.journal_path)?;
            all.extend(
                events
                    .into_iter()
                    .filter(|event| event.region == region.name),
            );
        }
        Ok(all)
    }

    /// Event ids in the primary's PostgreSQL, with repeats.
    pub fn postgres_ids(&self) -> Vec<String> {
        self.pg
            .psql("SELECT event_id FROM mining_events")
            .lines()
            .map(str::to_owned)
            .collect()
    }

    /// Event ids in the primary's Redis streams, with repeats.
    pub fn redis_ids(&self) -> Result<Vec<String>, ChaosError> {
        ledger::redis_stream_ids(&self.redis.url())
    }

    /// Rows of each region in the primary's PostgreSQL.
    pub fn postgres_counts(&self) -> std::collections::BTreeMap<String, usize> {
        self.pg
            .psql("SELECT region, count(*) FROM mining_events GROUP BY region")
            .lines()
            .filter_map(|line| {
                let (region, count) = line.split_once('|')?;
                Some((region.to_owned(), count.trim().parse().ok()?))
            })
            .collect()
    }

    /// Both of the collector's cursors have reached the end of the
    /// primary's journal (which the ingest fills with the relays' events).
    pub fn collector_caught_up(&self) -> bool {
        let last = ledger::journal_last_seq(&self.regions[0].journal_path).unwrap_or(u64::MAX);
        let cursor = |sql: &str| self.pg.psql(sql).trim().parse::<u64>().unwrap_or(0);
        let postgres = cursor("SELECT seq FROM collector_cursor WHERE sink = 'postgres'");
        let redis = self
            .redis
            .cli(&["GET", "tbg:collector:cursor:redis"])
            .trim()
            .parse::<u64>()
            .unwrap_or(0);
        postgres >= last && redis >= last
    }

    /// Waits until every id of `expected` is in both of the primary's sinks.
    pub async fn wait_converged(
        &self,
        expected: &BTreeSet<String>,
        timeout: Duration,
    ) -> Result<Duration, ChaosError> {
        wait_until(
            "every region's events in the primary's sinks",
            timeout,
            || {
                let postgres: BTreeSet<String> = self.postgres_ids().into_iter().collect();
                let redis: BTreeSet<String> =
                    self.redis_ids().unwrap_or_default().into_iter().collect();
                expected.is_subset(&postgres) && expected.is_subset(&redis)
            },
        )
        .await
    }
}

/// RPC to a region's embedded node over its management link.
fn node_client(host: &crate::netns::Host, data_dir: &Path) -> Result<RpcClient, ChaosError> {
    let endpoint = NodeEndpoint {
        url: format!("http://{}:{RPC_PORT}", host.mgmt_ip),
        auth: NodeAuth::Cookie(data_dir.join("chain").join(".cookie")),
    };
    RpcClient::new(endpoint, Duration::from_secs(3))
        .map_err(|e| ChaosError::Failed(format!("rpc client: {e}")))
}

fn write(path: &Path, text: &str) -> Result<(), ChaosError> {
    std::fs::write(path, text).map_err(|e| ChaosError::io(format!("writing {}", path.display()), e))
}
