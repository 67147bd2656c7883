//! The config structure. Every field has a default and is documented;
//! config.example.toml shows the same keys.

use std::fmt;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// Which Bitcoin network the pool mines on.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NetworkName {
    #[default]
    #[serde(alias = "bitcoin", alias = "main")]
    Mainnet,
    /// testnet3.
    #[serde(alias = "testnet3")]
    Testnet,
    Testnet4,
    Signet,
    Regtest,
}

impl NetworkName {
    pub fn to_bitcoin(self) -> bitcoin::Network {
        match self {
            NetworkName::Mainnet => bitcoin::Network::Bitcoin,
            NetworkName::Testnet => bitcoin::Network::Testnet,
            NetworkName::Testnet4 => bitcoin::Network::Testnet4,
            NetworkName::Signet => bitcoin::Network::Signet,
            NetworkName::Regtest => bitcoin::Network::Regtest,
        }
    }

    /// Bitcoin Core's default RPC port on this network.
    pub fn default_rpc_port(self) -> u16 {
        match self {
            NetworkName::Mainnet => 8332,
            NetworkName::Testnet => 18332,
            NetworkName::Testnet4 => 48332,
            NetworkName::Signet => 38332,
            NetworkName::Regtest => 18443,
        }
    }

    /// From getblockchaininfo's `chain` (`main`, `test`, `testnet4`,
    /// `signet`, `regtest`).
    pub fn from_core_chain(chain: &str) -> Option<NetworkName> {
        match chain {
            "main" => Some(NetworkName::Mainnet),
            "test" => Some(NetworkName::Testnet),
            "testnet4" => Some(NetworkName::Testnet4),
            "signet" => Some(NetworkName::Signet),
            "regtest" => Some(NetworkName::Regtest),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            NetworkName::Mainnet => "mainnet",
            NetworkName::Testnet => "testnet",
            NetworkName::Testnet4 => "testnet4",
            NetworkName::Signet => "signet",
            NetworkName::Regtest => "regtest",
        }
    }
}

/// The whole config file.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Bitcoin network: mainnet, testnet, testnet4, signet or regtest.
    pub network: NetworkName,
    /// Set by the ckpool import when the file names no network (ckpool has
    /// no such key: its network is its node's). The pool then asks its node
    /// (getblockchaininfo `chain`) and validates addresses after; until
    /// then `network` is only the rpc port's guess.
    #[serde(skip)]
    pub network_from_node: bool,
    /// Directory for log files (ckpool `logdir`).
    pub logdir: PathBuf,
    /// Bitcoin Core nodes in priority order (ckpool `btcd`). Empty by
    /// default; at least one is required unless the node is embedded.
    pub nodes: Vec<NodeConfig>,
    /// Stratum pool settings.
    pub pool: PoolSection,
    /// Event socket (share/block events for side services).
    pub events: EventsSection,
    /// Optional Redis (per-user coinbase signatures).
    pub redis: RedisSection,
    /// Prometheus metrics endpoint.
    pub metrics: MetricsSection,
    /// The pool's durable event journal.
    pub journal: JournalSection,
    /// `tbg collector`: journal -> Redis Streams + PostgreSQL.
    pub collector: CollectorSection,
    /// Found blocks: the durable store and how they are followed.
    pub blocks: crate::BlocksSection,
    /// Multi-region: this pool's role, instance id and relay link.
    pub region: crate::RegionSection,
    /// NATS JetStream, where every region's events converge.
    pub nats: crate::NatsSection,
    /// `tbg health-monitor`: every region's health on one URL.
    pub health_monitor: crate::HealthMonitorSection,
    /// The public dashboard.
    pub web: crate::WebSection,
    /// Stratum over TLS on a port of its own (off by default).
    pub stratum_tls: crate::StratumTlsSection,
    pub stratum_v2: crate::StratumV2Section,
    /// Signed webhooks (block found, confirmed, orphaned; worker offline).
    pub notify: crate::NotifySection,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            network: NetworkName::Mainnet,
            network_from_node: false,
            logdir: PathBuf::from("logs"),
            nodes: Vec::new(),
            pool: PoolSection::default(),
            events: EventsSection::default(),
            redis: RedisSection::default(),
            metrics: MetricsSection::default(),
            journal: JournalSection::default(),
            collector: CollectorSection::default(),
            blocks: crate::BlocksSection::default(),
            region: crate::RegionSection::default(),
            nats: crate::NatsSection::default(),
            health_monitor: crate::HealthMonitorSection::default(),
            web: crate::WebSection::default(),
            stratum_tls: crate::StratumTlsSection::default(),
            stratum_v2: crate::StratumV2Section::default(),
            notify: crate::NotifySection::default(),
        }
    }
}

/// One Bitcoin Core node (ckpool `btcd` entry).
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NodeConfig {
    /// RPC address, `host:port` or `http://host:port`.
    pub url: String,
    /// RPC user (ckpool `auth`); with `pass`, or use `cookie_file`.
    #[serde(alias = "auth", skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// RPC password; better set through TBG_NODE_<N>_PASS / TBG_NODE_PASS.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pass: Option<String>,
    /// Path of Core's `.cookie` file, instead of user/pass.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cookie_file: Option<PathBuf>,
    /// Core's `-zmqpubhashblock` address, e.g. `tcp://127.0.0.1:28332`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub zmq_hashblock: Option<String>,
    /// Whether this node notifies new blocks (ckpool `notify`); kept for
    /// ckpool compatibility, polling runs in any case.
    pub notify: bool,
}

impl Default for NodeConfig {
    fn default() -> NodeConfig {
        NodeConfig {
            url: "127.0.0.1:8332".to_owned(),
            user: None,
            pass: None,
            cookie_file: None,
            zmq_hashblock: None,
            notify: true,
        }
    }
}

impl fmt::Debug for NodeConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NodeConfig")
            .field("url", &self.url)
            .field("user", &self.user)
            .field("pass", &self.pass.as_ref().map(|_| "<redacted>"))
            .field("cookie_file", &self.cookie_file)
            .field("zmq_hashblock", &self.zmq_hashblock)
            .field("notify", &self.notify)
            .finish()
    }
}

/// Default `pool.maxdiff`: one share per 10 s for a ~430 TH/s miner (the
/// largest single machine today). A bigger connection, a farm behind one
/// proxy, just submits more often: up to ~70 PH/s it stays under the submit
/// rate limit (1000 a minute).
pub const DEFAULT_MAXDIFF: f64 = 1_000_000.0;

/// Default `pool.wakeup_coalescing_us`: 20-25 % less CPU per share at
/// 10,000-20,000 paced shares/s on a 2-core VM (docs/benchmarks.md), for at
/// most half a millisecond more before a busy pool's answer.
pub const DEFAULT_WAKEUP_COALESCING_US: u64 = 500;

/// Stratum pool settings (ckpool key names as aliases).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PoolSection {
    /// Stratum listen address (ckpool `serverurl`, first entry).
    #[serde(alias = "serverurl")]
    pub bind: String,
    /// Pool tag in every coinbase scriptSig (ckpool `btcsig`).
    #[serde(alias = "btcsig")]
    pub pool_tag: String,
    /// Pool's own payout address (ckpool `btcaddress`); in solo mode each
    /// miner's username is its payout address, so this is optional.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub btcaddress: Option<String>,
    /// getbestblockhash polling period in ms (ckpool `blockpoll`).
    #[serde(alias = "blockpoll")]
    pub blockpoll_ms: u64,
    /// Template refresh period in seconds without a new block (ckpool
    /// `update_interval`).
    #[serde(alias = "update_interval")]
    pub update_interval_s: u64,
    /// Lowest share difficulty; fractions allowed, e.g. 0.0001.
    pub mindiff: f64,
    /// Difficulty given to a new miner.
    pub startdiff: f64,
    /// Highest share difficulty (default 1,000,000); 0 = no explicit limit
    /// (ckpool's meaning). Never above the network difficulty of the
    /// current work nor [`crate::MAX_DIFFICULTY`], whatever is set here.
    pub maxdiff: f64,
    /// BIP310 version-rolling mask, hex.
    pub version_mask: String,
    /// extranonce1 bytes per connection, 2..=8.
    pub nonce1length: u8,
    /// extranonce2 bytes rolled by miners, 2..=8.
    pub nonce2length: u8,
    /// Most simultaneous miner connections; 0 = unlimited.
    pub maxclients: u32,
    /// Vardiff target: seconds between shares of one miner.
    pub share_interval_s: f64,
    /// Longest accepted stratum line in bytes.
    pub max_line_bytes: usize,
    /// Share of each block reward donated, in percent (ckpool `donation`).
    pub donation: f64,
    /// More invalid shares than this in one minute closes a connection.
    pub max_invalid_shares_per_minute: u32,
    // The abuse limits (docs/disaster-recovery.md, "Limits"). A source is
    // an IPv4 address or an IPv6 /64; 0 = no limit for every count.
    /// Simultaneous connections from one source.
    pub max_connections_per_ip: u32,
    /// New connections per minute from one source (a burst of as many).
    pub max_connects_per_minute_per_ip: u32,
    /// A source with more connections closed for abuse (protocol errors,
    /// invalid shares) than this in a minute is banned for
    /// `ban_duration_s`. Connect-rate and concurrency refusals never count.
    pub ban_after_refusals_per_minute: u32,
    /// Length of a soft ban in seconds; 0 = no bans.
    pub ban_duration_s: u64,
    /// Sources exempt from the per-source limits (CIDRs or addresses): a
    /// farm behind one NAT, a stratum proxy.
    pub allow_list: Vec<String>,
    /// Sources remembered at most; when full, the least recently seen one
    /// without an open connection is forgotten. Needs a restart.
    pub ip_table_size: u32,
    /// Per connection and minute: mining.subscribe requests.
    pub max_subscribes_per_minute: u32,
    /// Per connection and minute: mining.authorize requests.
    pub max_authorizes_per_minute: u32,
    /// Per connection and minute: mining.submit requests credited; one
    /// over it is still judged (a block is submitted) but not journaled.
    pub max_submits_per_minute: u32,
    /// Per connection and minute: mining.configure, suggest_difficulty and
    /// extranonce.subscribe together.
    pub max_other_requests_per_minute: u32,
    /// Per connection and minute: unparsable lines, unknown methods,
    /// malformed and rate-limited requests (not submits); past it the
    /// connection closes.
    pub max_protocol_errors_per_minute: u32,
    /// A connection that has not authorized within this many seconds is closed.
    pub authorize_timeout_s: u64,
    /// An authorized connection with no well-formed subscribe, authorize
    /// or submit for this many seconds is closed.
    pub idle_timeout_s: u64,
    /// A busy pool's worker threads wait this long before blocking, so
    /// shares arriving close together cost one wake-up; 0 = never wait.
    pub wakeup_coalescing_us: u64,
}

impl Default for PoolSection {
    fn default() -> PoolSection {
        PoolSection {
            bind: "[::]:3333".to_owned(),
            pool_tag: "/tbg/".to_owned(),
            btcaddress: None,
            blockpoll_ms: 500,
            update_interval_s: 30,
            mindiff: 1.0,
            startdiff: 42.0,
            maxdiff: DEFAULT_MAXDIFF,
            version_mask: "1fffe000".to_owned(),
            nonce1length: 4,
            nonce2length: 8,
            maxclients: 0,
            share_interval_s: 10.0,
            max_line_bytes: 16384,
            donation: 0.0,
            max_invalid_shares_per_minute: 100,
            max_connections_per_ip: 50,
            max_connects_per_minute_per_ip: 10,
            ban_after_refusals_per_minute: 10,
            ban_duration_s: 300,
            allow_list: Vec::new(),
            ip_table_size: 65_536,
            max_subscribes_per_minute: 3,
            max_authorizes_per_minute: 5,
            max_submits_per_minute: 1000,
            max_other_requests_per_minute: 30,
            max_protocol_errors_per_minute: 20,
            authorize_timeout_s: 60,
            idle_timeout_s: 900,
            wakeup_coalescing_us: DEFAULT_WAKEUP_COALESCING_US,
        }
    }
}

/// Event socket settings.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EventsSection {
    /// Unix datagram socket events are sent to (ckpool `event_socket_path`).
    #[serde(alias = "event_socket_path")]
    pub socket_path: PathBuf,
    /// Region tag in every event (ckpool `tbg_region`).
    #[serde(alias = "tbg_region")]
    pub region: String,
    /// Source tag in every event.
    pub source: String,
}

impl Default for EventsSection {
    fn default() -> EventsSection {
        EventsSection {
            socket_path: PathBuf::from("/tmp/ckpool/events.sock"),
            region: "local".to_owned(),
            source: "hosted".to_owned(),
        }
    }
}

/// Redis settings.
#[derive(Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RedisSection {
    /// `redis://[:password@]host:port/db`; unset = no Redis (ckpool
    /// `redis_url`). Better set through TBG_REDIS_URL when it has a password.
    #[serde(alias = "redis_url", skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
}

impl fmt::Debug for RedisSection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisSection")
            .field("url", &self.url.as_deref().map(redact_url))
            .finish()
    }
}

/// `scheme://user:secret@host` -> `scheme://user:<redacted>@host`; each
/// entry of a comma-separated list (a NATS cluster) on its own. An entry
/// without a scheme (`user:secret@host:4222`) and a libpq key/value string
/// (`host=db password=secret`) are redacted too: whatever an operator
/// typed, a log line never carries the secret.
pub fn redact_url(url: &str) -> String {
    if url.contains("password") && !url.contains("://") {
        return redact_key_values(url);
    }
    url.split(',')
        .map(redact_one_url)
        .collect::<Vec<_>>()
        .join(",")
}

fn redact_one_url(url: &str) -> String {
    let (scheme, rest) = match url.split_once("://") {
        Some((scheme, rest)) => (format!("{scheme}://"), rest),
        None => (String::new(), url),
    };
    // The userinfo ends at the last '@': a secret may hold '/' (base64),
    // so a path is not looked for first; an '@' in a path only costs the
    // host part of the shown value.
    let Some(at) = rest.rfind('@') else {
        return url.to_owned();
    };
    let (userinfo, host) = (&rest[..at], &rest[at + 1..]);
    match userinfo.split_once(':') {
        Some((user, _)) => format!("{scheme}{user}:<redacted>@{host}"),
        None => format!("{scheme}<redacted>@{host}"),
    }
}

/// `host=db password=secret user=pool` -> `... password=<redacted> ...`;
/// libpq also takes `password = 'a secret'`: everything after the key up
/// to the next key goes.
fn redact_key_values(text: &str) -> String {
    let Some(start) = text.find("password") else {
        return text.to_owned();
    };
    let after = &text[start + "password".len()..];
    let value = after.trim_start().trim_start_matches('=').trim_start();
    let rest = if let Some(quoted) = value.strip_prefix('\'') {
        quoted.find('\'').map_or("", |end| &quoted[end + 1..])
    } else {
        value.find(' ').map_or("", |end| &value[end..])
    };
    format!(
        "{}password=<redacted>{}",
        &text[..start],
        redact_key_values(rest)
    )
}

#[cfg(test)]
mod redact_tests {
    use super::redact_url;

    #[test]
    fn every_form_of_a_secret_is_redacted() {
        for (url, redacted) in [
            (
                "postgres://pool:hunter2@db:5432/tbg",
                "postgres://pool:<redacted>@db:5432/tbg",
            ),
            ("redis://:hunter2@cache", "redis://:<redacted>@cache"),
            ("nats://token@n1:4222", "nats://<redacted>@n1:4222"),
            ("pool:hunter2@n1:4222", "pool:<redacted>@n1:4222"),
            (
                "nats://a:hunter2@n1:4222,b:hunter2@n2:4222",
                "nats://a:<redacted>@n1:4222,b:<redacted>@n2:4222",
            ),
            (
                "host=db password=hunter2 user=pool",
                "host=db password=<redacted> user=pool",
            ),
            (
                "host=db password = 'hunter2 x' user=pool",
                "host=db password=<redacted> user=pool",
            ),
            ("nats://u:hunter2/ab@n1:4222", "nats://u:<redacted>@n1:4222"),
            ("redis://cache:6379", "redis://cache:6379"),
        ] {
            assert_eq!(redact_url(url), redacted, "{url}");
            assert!(!redact_url(url).contains("hunter2"));
        }
    }
}

/// Prometheus metrics settings.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsSection {
    /// HTTP listen address of /metrics (ckpool `metrics_port` sets the port).
    pub bind: String,
    /// HTTP listen address of the collector's /metrics and /health.
    pub collector_bind: String,
    /// /health reports the pool not ready when its template is older.
    pub max_template_age_secs: u64,
    /// /health reports the collector not ready when a sink lags more events.
    pub max_collector_lag: u64,
    /// Bearer token of `/metrics` and the status API of the pool and the
    /// collector (`/health*` stays open). Unset: no token. A secret:
    /// prefer `TBG_METRICS_TOKEN`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
}

impl std::fmt::Debug for MetricsSection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MetricsSection")
            .field("bind", &self.bind)
            .field("collector_bind", &self.collector_bind)
            .field("max_template_age_secs", &self.max_template_age_secs)
            .field("max_collector_lag", &self.max_collector_lag)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

impl Default for MetricsSection {
    fn default() -> MetricsSection {
        MetricsSection {
            bind: "127.0.0.1:9100".to_owned(),
            collector_bind: "127.0.0.1:9101".to_owned(),
            max_template_age_secs: 180,
            max_collector_lag: 10_000,
            token: None,
        }
    }
}

/// How much a journaled event survives.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum JournalDurability {
    /// Survives a crash of the pool process: durable once copied into the
    /// staging ring (SQLite synchronous=NORMAL behind it).
    ProcessCrash,
    /// Also survives a power loss (the reply waits for the SQLite commit,
    /// fsynced; slower).
    PowerLoss,
}

/// The pool's durable event journal (SQLite, WAL mode).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct JournalSection {
    /// Journal every event before answering the miner. Off = datagram socket only.
    pub enabled: bool,
    /// The SQLite file; `tbg collector` reads the same path.
    pub path: PathBuf,
    pub durability: JournalDurability,
    /// Events older than this many days are deleted (must exceed any sink outage).
    pub retention_days: u64,
    /// The oldest events are deleted while the file is larger than this.
    pub retention_max_mb: u64,
    /// Size of the staging ring (preallocated): how much may wait for
    /// SQLite before shares are refused.
    pub stage_mb: u64,
    /// Directory of the staging ring. Unset: `$RUNTIME_DIRECTORY` (systemd)
    /// or else `/dev/shm`, tmpfs where appends are a memory copy, when the
    /// ring can be created there; else beside the SQLite file
    /// (`<path>.stage`). Set: that directory or the pool does not start.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stage_dir: Option<PathBuf>,
    /// CPUs the journal's SQLite threads run on (e.g. `[0]`); unset: the
    /// pool's. Keeps SQLite's commit bursts off cores that serve miners.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub writer_cpus: Option<Vec<usize>>,
}

impl Default for JournalSection {
    fn default() -> JournalSection {
        JournalSection {
            enabled: true,
            path: PathBuf::from("journal/events.db"),
            durability: JournalDurability::ProcessCrash,
            retention_days: 7,
            retention_max_mb: 10 * 1024,
            stage_mb: 16,
            stage_dir: None,
            writer_cpus: None,
        }
    }
}

/// `tbg collector` settings.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CollectorSection {
    /// PostgreSQL connection string (`postgres://user:pass@host:5432/db` or
    /// `host=... user=...`); unset = no PostgreSQL sink. Better set through
    /// TBG_POSTGRES_URL.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub postgres_url: Option<String>,
    /// Redis for the streams; unset = `redis.url`; both unset = no Redis sink.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub redis_url: Option<String>,
    /// `MAXLEN ~` of every `mining:<event>` stream.
    pub stream_maxlen: u64,
    /// Most events per write.
    pub batch_max: usize,
    /// Longest wait to fill a batch, in milliseconds.
    pub batch_wait_ms: u64,
}

impl Default for CollectorSection {
    fn default() -> CollectorSection {
        CollectorSection {
            postgres_url: None,
            redis_url: None,
            stream_maxlen: 100_000,
            batch_max: 500,
            batch_wait_ms: 1000,
        }
    }
}

impl fmt::Debug for CollectorSection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CollectorSection")
            .field(
                "postgres_url",
                &self.postgres_url.as_deref().map(redact_url),
            )
            .field("redis_url", &self.redis_url.as_deref().map(redact_url))
            .field("stream_maxlen", &self.stream_maxlen)
            .field("batch_max", &self.batch_max)
            .field("batch_wait_ms", &self.batch_wait_ms)
            .finish()
    }
}
