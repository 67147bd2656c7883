use std::collections::HashMap;

use tbg_config::{Config, ConfigError, NetworkName, NodeConfig};

const EXAMPLE: &str = include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/config.example.toml"));

fn env_of(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
    let map: HashMap<String, String> = pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    move |name| map.get(name).cloned()
}

/// A valid config with one node.
fn valid() -> Config {
    Config::from_toml_str(
        r#"
network = "regtest"
[[nodes]]
url = "127.0.0.1:18443"
user = "u"
pass = "p"
"#,
    )
    .unwrap()
}

#[test]
fn example_config_parses_and_documents_the_defaults() {
    let mut example = Config::from_toml_str(EXAMPLE).unwrap();
    assert_eq!(example.nodes.len(), 1);
    assert_eq!(example.nodes[0].user.as_deref(), Some("bitcoinrpc"));
    // The example gives a password through the environment.
    example.apply_env(&env_of(&[("TBG_NODE_PASS", "secret")]));
    example.validate().unwrap();
    // Apart from the example node, every value shown is the default.
    example.nodes.clear();
    assert_eq!(example, Config::default());
}

#[test]
fn empty_file_gives_defaults_and_defaults_round_trip() {
    let from_empty = Config::from_toml_str("").unwrap();
    assert_eq!(from_empty, Config::default());
    let text = Config::default().to_toml_string().unwrap();
    assert_eq!(Config::from_toml_str(&text).unwrap(), from_empty);
    // A full config round-trips too (Options, nodes).
    let mut full = valid();
    full.redis.url = Some("redis://127.0.0.1:6379/0".into());
    let text = full.to_toml_string().unwrap();
    assert_eq!(Config::from_toml_str(&text).unwrap(), full);
}

#[test]
fn defaults_match_the_brief() {
    let config = Config::default();
    assert_eq!(config.network, NetworkName::Mainnet);
    // Dual-stack stratum; the HTTP endpoints on loopback (issue 18).
    assert_eq!(config.pool.bind, "[::]:3333");
    assert_eq!(config.pool.pool_tag, "/tbg/");
    assert_eq!(config.pool.blockpoll_ms, 500);
    assert_eq!(config.pool.update_interval_s, 30);
    assert_eq!(config.pool.mindiff, 1.0);
    assert_eq!(config.pool.startdiff, 42.0);
    // A limit by default (issue 16): see config.example.toml for why 1e6.
    assert_eq!(config.pool.maxdiff, 1_000_000.0);
    assert_eq!(config.pool.maxdiff, tbg_config::DEFAULT_MAXDIFF);
    assert_eq!(config.pool.version_mask, "1fffe000");
    assert_eq!((config.pool.nonce1length, config.pool.nonce2length), (4, 8));
    assert_eq!(config.pool.max_line_bytes, 16384);
    assert_eq!(
        config.events.socket_path.to_str(),
        Some("/tmp/ckpool/events.sock")
    );
    assert_eq!(config.metrics.bind, "127.0.0.1:9100");
    assert_eq!(config.metrics.collector_bind, "127.0.0.1:9101");
    assert_eq!(config.network.to_bitcoin(), bitcoin::Network::Bitcoin);
}

#[test]
fn fractional_mindiff_is_accepted() {
    let mut config = valid();
    config.pool.mindiff = 0.0001;
    config.pool.startdiff = 0.001;
    config.validate().unwrap();
}

/// Makes one value of a valid config wrong.
type Spoil = Box<dyn Fn(&mut Config)>;

#[test]
fn bad_values_name_their_key() {
    let cases: Vec<(&str, Spoil)> = vec![
        ("pool.nonce1length", Box::new(|c| c.pool.nonce1length = 12)),
        ("pool.nonce2length", Box::new(|c| c.pool.nonce2length = 1)),
        ("pool.mindiff", Box::new(|c| c.pool.mindiff = 0.0)),
        ("pool.mindiff", Box::new(|c| c.pool.mindiff = f64::NAN)),
        ("pool.maxdiff", Box::new(|c| c.pool.maxdiff = 0.5)),
        ("pool.maxdiff", Box::new(|c| c.pool.maxdiff = 2e12)),
        ("pool.maxdiff", Box::new(|c| c.pool.maxdiff = f64::INFINITY)),
        (
            "pool.startdiff",
            Box::new(|c| {
                c.pool.maxdiff = 0.0;
                c.pool.startdiff = 1e13;
            }),
        ),
        ("pool.startdiff", Box::new(|c| c.pool.startdiff = 2e6)),
        ("pool.startdiff", Box::new(|c| c.pool.startdiff = 0.5)),
        (
            "pool.version_mask",
            Box::new(|c| c.pool.version_mask = "zz".into()),
        ),
        (
            "pool.version_mask",
            Box::new(|c| c.pool.version_mask = "ffffffff".into()),
        ),
        ("pool.bind", Box::new(|c| c.pool.bind = "nowhere".into())),
        (
            "pool.pool_tag",
            Box::new(|c| c.pool.pool_tag = "x".repeat(41)),
        ),
        (
            "pool.pool_tag",
            Box::new(|c| c.pool.pool_tag = "tag\n".into()),
        ),
        (
            "pool.btcaddress",
            Box::new(|c| c.pool.btcaddress = Some("notanaddress".into())),
        ),
        ("pool.blockpoll_ms", Box::new(|c| c.pool.blockpoll_ms = 0)),
        (
            "pool.update_interval_s",
            Box::new(|c| c.pool.update_interval_s = 0),
        ),
        (
            "pool.share_interval_s",
            Box::new(|c| c.pool.share_interval_s = -1.0),
        ),
        (
            "pool.max_line_bytes",
            Box::new(|c| c.pool.max_line_bytes = 10),
        ),
        ("pool.donation", Box::new(|c| c.pool.donation = 100.0)),
        ("metrics.bind", Box::new(|c| c.metrics.bind = "9100".into())),
        (
            "events.region",
            Box::new(|c| c.events.region = String::new()),
        ),
        (
            "redis.url",
            Box::new(|c| c.redis.url = Some("http://x".into())),
        ),
        ("nodes", Box::new(|c| c.nodes.clear())),
        (
            "nodes[0].url",
            Box::new(|c| c.nodes[0].url = "localhost".into()),
        ),
        ("nodes[0].pass", Box::new(|c| c.nodes[0].pass = None)),
        (
            "nodes[0].cookie_file",
            Box::new(|c| c.nodes[0].cookie_file = Some("/x".into())),
        ),
        (
            "nodes[0].zmq_hashblock",
            Box::new(|c| c.nodes[0].zmq_hashblock = Some("ipc://x".into())),
        ),
        (
            "journal.writer_cpus",
            Box::new(|c| c.journal.writer_cpus = Some(Vec::new())),
        ),
        (
            "journal.writer_cpus",
            Box::new(|c| c.journal.writer_cpus = Some(vec![0, 4096])),
        ),
        (
            "stratum_v2.bind",
            Box::new(|c| {
                c.stratum_v2.bind = c.pool.bind.clone();
                c.stratum_v2.authority_secret_key = "x".into();
            }),
        ),
        (
            "stratum_v2.bind",
            Box::new(|c| {
                c.stratum_v2.on_v1_port = true;
                c.stratum_v2.bind = "[::]:3336".into();
                c.stratum_v2.authority_secret_key = "x".into();
            }),
        ),
        (
            "stratum_v2.authority_secret_key",
            Box::new(|c| c.stratum_v2.on_v1_port = true),
        ),
    ];
    for (key, spoil) in cases {
        let mut config = valid();
        spoil(&mut config);
        let error = config.validate().expect_err(key);
        assert_eq!(error.key, key, "{error}");
    }
}

#[test]
fn error_line_reads_like_the_brief() {
    let mut config = valid();
    config.pool.nonce1length = 12;
    let error = config.validate().unwrap_err();
    assert_eq!(
        error.to_string(),
        "pool.nonce1length = 12: must be between 2 and 8"
    );
}

#[test]
fn embedded_node_allows_no_nodes() {
    let config = Config::default();
    assert_eq!(config.validate().unwrap_err().key, "nodes");
    config.validate_embedded_node().unwrap();
}

#[test]
fn regtest_address_checked_against_network() {
    let mut config = valid();
    config.pool.btcaddress = Some("bcrt1qw508d6qejxtdg4y5r3zarvary0c5xw7kygt080".into());
    config.validate().unwrap();
    config.network = NetworkName::Mainnet;
    assert_eq!(config.validate().unwrap_err().key, "pool.btcaddress");
}

#[test]
fn toml_errors_carry_key_and_position() {
    let error = Config::from_toml_str("[pool]\nnonce1length = \"four\"\n").unwrap_err();
    assert_eq!(error.key, "pool.nonce1length");
    assert!(error.reason.contains("line 2, column 16"), "{error}");

    let error = Config::from_toml_str("[pool]\nmindiff = 1.0\nbogus = 3\n").unwrap_err();
    assert!(error.reason.contains("line 3"), "{error}");
    assert!(error.reason.contains("bogus"), "{error}");

    let error = Config::from_toml_str("network = \"mainnet\"\n[pool\n").unwrap_err();
    assert!(error.reason.contains("line 2"), "{error}");

    let error = Config::from_toml_str("network = \"moonnet\"\n").unwrap_err();
    assert_eq!(error.key, "network");
}

#[test]
fn ckpool_aliases_are_accepted_in_toml() {
    let config = Config::from_toml_str(
        "[pool]\nbtcsig = \"/old/\"\nblockpoll = 100\nupdate_interval = 60\n[events]\ntbg_region = \"eu\"\n",
    )
    .unwrap();
    assert_eq!(config.pool.pool_tag, "/old/");
    assert_eq!(config.pool.blockpoll_ms, 100);
    assert_eq!(config.pool.update_interval_s, 60);
    assert_eq!(config.events.region, "eu");
}

#[test]
fn env_overrides_replace_secrets() {
    let mut config = valid();
    config.nodes.push(NodeConfig {
        url: "127.0.0.1:18444".into(),
        user: Some("u2".into()),
        pass: Some("file-pass-2".into()),
        ..NodeConfig::default()
    });
    let applied = config.apply_env(&env_of(&[
        ("TBG_NODE_PASS", "env-pass"),
        ("TBG_NODE_1_PASS", "env-pass-1"),
        ("TBG_REDIS_URL", "redis://:pw@127.0.0.1:6379"),
    ]));
    assert_eq!(config.nodes[0].pass.as_deref(), Some("env-pass"));
    assert_eq!(config.nodes[1].pass.as_deref(), Some("env-pass-1"));
    assert_eq!(
        config.redis.url.as_deref(),
        Some("redis://:pw@127.0.0.1:6379")
    );
    assert_eq!(
        applied,
        vec!["TBG_NODE_1_PASS", "TBG_NODE_PASS", "TBG_REDIS_URL"]
    );
    config.validate().unwrap();

    // No variables: nothing changes.
    let before = config.clone();
    assert!(config.apply_env(&|_| None).is_empty());
    assert_eq!(config, before);
}

#[test]
fn debug_hides_passwords() {
    let mut config = valid();
    config.nodes[0].pass = Some("hunter2-secret".into());
    config.redis.url = Some("redis://user:redis-secret@127.0.0.1:6379/0".into());
    let text = format!("{config:?}");
    assert!(!text.contains("hunter2-secret"), "{text}");
    assert!(!text.contains("redis-secret"), "{text}");
    assert!(text.contains("127.0.0.1:18443"), "{text}");
}

/// A realistic ckpool.conf (solo mode, two nodes, reference-system keys).
const CKPOOL_CONF: &str = r#"{
"btcd" :  [
	{
		"url" : "127.0.0.1:18443",
		"auth" : "bitcoinrpc",
		"pass" : "ckpool-secret",
		"notify" : true
	},
	{
		"url" : "backup.example:18443",
		"auth" : "user2",
		"pass" : "pass2",
		"notify" : false
	}
],
"btcaddress" : "bcrt1qw508d6qejxtdg4y5r3zarvary0c5xw7kygt080",
"btcsig" : "/mined by ck/",
"blockpoll" : 100,
"donation" : 0.5,
"serverurl" : [
	"0.0.0.0:3334",
	"0.0.0.0:4444"
],
"mindiff" : 0.001,
"startdiff" : 42,
"maxdiff" : 0,
"update_interval" : 20,
"version_mask" : "1fffe000",
"nonce1length" : 4,
"nonce2length" : 8,
"logdir" : "/var/log/ckpool",
"maxclients" : 5000,
"zmqblock" : "tcp://127.0.0.1:28332",
"event_socket_path" : "/run/ckpool/events.sock",
"metrics_port" : 9200,
"redis_url" : "redis://127.0.0.1:6379/1",
"tbg_region" : "eu-west",
"sockdir" : "/tmp/ckpool",
"proxy" : false
}"#;

#[test]
fn ckpool_json_import() {
    let (config, warnings) = Config::from_ckpool_json(CKPOOL_CONF).unwrap();
    assert_eq!(
        config.network,
        NetworkName::Regtest,
        "guessed from rpc port 18443"
    );
    assert_eq!(config.nodes.len(), 2);
    assert_eq!(config.nodes[0].url, "127.0.0.1:18443");
    assert_eq!(config.nodes[0].user.as_deref(), Some("bitcoinrpc"));
    assert_eq!(config.nodes[0].pass.as_deref(), Some("ckpool-secret"));
    assert!(config.nodes[0].notify);
    assert!(!config.nodes[1].notify);
    assert_eq!(
        config.nodes[0].zmq_hashblock.as_deref(),
        Some("tcp://127.0.0.1:28332")
    );
    assert_eq!(config.nodes[1].zmq_hashblock, None);
    let pool = &config.pool;
    assert_eq!(pool.bind, "0.0.0.0:3334");
    assert_eq!(pool.pool_tag, "/mined by ck/");
    assert_eq!(pool.blockpoll_ms, 100);
    assert_eq!(pool.donation, 0.5);
    assert_eq!(pool.mindiff, 0.001);
    assert_eq!(pool.startdiff, 42.0);
    assert_eq!(pool.update_interval_s, 20);
    assert_eq!(pool.maxclients, 5000);
    assert_eq!(pool.maxdiff, 0.0, "ckpool's 0: no explicit limit, kept");
    assert_eq!(config.logdir.to_str(), Some("/var/log/ckpool"));
    assert_eq!(
        config.events.socket_path.to_str(),
        Some("/run/ckpool/events.sock")
    );
    assert_eq!(config.events.region, "eu-west");
    assert_eq!(config.metrics.bind, "0.0.0.0:9200");
    assert_eq!(
        config.redis.url.as_deref(),
        Some("redis://127.0.0.1:6379/1")
    );
    config.validate().unwrap();

    let joined = warnings.join("\n");
    assert!(joined.contains("sockdir"), "{joined}");
    assert!(joined.contains("proxy"), "{joined}");
    assert!(joined.contains("serverurl"), "{joined}");
    assert!(joined.contains("regtest"), "{joined}");
    assert_eq!(warnings.len(), 4, "{joined}");
}

#[test]
fn a_ckpool_network_is_the_nodes_unless_the_file_names_one() {
    // No network key, a non-default port: mainnet by the port, settled by
    // the node later, so a regtest payout address is not refused yet.
    let text = r#"{"btcd": [{"url": "127.0.0.1:29999", "auth": "u", "pass": "p"}],
                   "btcaddress": "bcrt1qw508d6qejxtdg4y5r3zarvary0c5xw7kygt080"}"#;
    let (config, warnings) = Config::from_ckpool_json(text).unwrap();
    assert!(config.network_from_node);
    assert_eq!(config.network, NetworkName::Mainnet);
    config.validate().unwrap();
    assert!(
        warnings
            .iter()
            .any(|w| w.contains("the network is the node's")),
        "{warnings:?}"
    );
    // Once the network is known, the address is checked against it.
    let mut settled = config.clone();
    settled.network_from_node = false;
    let error = settled.validate().unwrap_err();
    assert_eq!(error.key, "pool.btcaddress");
    settled.network = NetworkName::Regtest;
    settled.validate().unwrap();

    // A network named in the file (ours, not ckpool's) is taken as is.
    let (config, warnings) = Config::from_ckpool_json(
        r#"{"network": "regtest", "btcd": [{"url": "127.0.0.1:29999", "auth": "u", "pass": "p"}]}"#,
    )
    .unwrap();
    assert_eq!(config.network, NetworkName::Regtest);
    assert!(!config.network_from_node);
    assert!(warnings.is_empty(), "{warnings:?}");
    let error = Config::from_ckpool_json(r#"{"network": "moonnet"}"#).unwrap_err();
    assert_eq!(error.key, "network");
}

#[test]
fn ckpool_without_maxdiff_gets_the_default_limit() {
    let (config, _) = Config::from_ckpool_json(r#"{"mindiff": 1, "startdiff": 42}"#).unwrap();
    assert_eq!(config.pool.maxdiff, tbg_config::DEFAULT_MAXDIFF);
    let (config, _) = Config::from_ckpool_json(r#"{"maxdiff": 0}"#).unwrap();
    assert_eq!(config.pool.maxdiff, 0.0);
    const { assert!(tbg_config::MAX_DIFFICULTY >= tbg_config::DEFAULT_MAXDIFF) };
}

#[test]
fn ckpool_json_errors_name_the_ckpool_key() {
    let error = Config::from_ckpool_json(r#"{"nonce1length": "four"}"#).unwrap_err();
    assert_eq!(error.key, "nonce1length");
    let error = Config::from_ckpool_json(r#"{"btcd": [{"url": 8332}]}"#).unwrap_err();
    assert_eq!(error.key, "btcd[0].url");
    let error = Config::from_ckpool_json(r#"{"btcd": [{"url": "a:1", "pass": 5}]}"#).unwrap_err();
    assert_eq!(error.key, "btcd[0].pass");
    let error = Config::from_ckpool_json("{\n\"mindiff\": ,}").unwrap_err();
    assert!(error.reason.contains("line 2"), "{error}");
}

#[test]
fn load_reads_toml_and_ckpool_files() {
    let dir = tempfile::tempdir().unwrap();
    let toml_path = dir.path().join("tbg.toml");
    std::fs::write(&toml_path, EXAMPLE).unwrap();
    let env = env_of(&[("TBG_NODE_PASS", "from-env")]);
    let config = tbg_config::load(Some(&toml_path), &env).unwrap();
    assert_eq!(config.nodes[0].pass.as_deref(), Some("from-env"));

    // Without the password the example is incomplete.
    let error: ConfigError = tbg_config::load(Some(&toml_path), &|_| None).unwrap_err();
    assert_eq!(error.key, "nodes[0].pass");

    let json_path = dir.path().join("ckpool.json");
    std::fs::write(&json_path, CKPOOL_CONF).unwrap();
    let config = tbg_config::load(Some(&json_path), &|_| None).unwrap();
    assert_eq!(config.pool.bind, "0.0.0.0:3334");

    let error = tbg_config::load(Some(&dir.path().join("missing.toml")), &|_| None).unwrap_err();
    assert_eq!(error.key, "config file");
}

/// The abuse limits are on by default with the plan's figures, an
/// allow-list parses, and a bad limit names its key.
#[test]
fn limits_default_to_the_plan_and_bad_ones_name_their_key() {
    let pool = valid().pool;
    assert_eq!(pool.max_connects_per_minute_per_ip, 10);
    assert_eq!(pool.max_connections_per_ip, 50);
    assert_eq!(pool.max_subscribes_per_minute, 3);
    assert_eq!(pool.max_authorizes_per_minute, 5);
    assert_eq!(pool.max_submits_per_minute, 1000);
    assert_eq!(pool.max_invalid_shares_per_minute, 100);
    assert_eq!(pool.ban_duration_s, 300);
    assert!(pool.allow_list.is_empty());

    let farm = Config::from_toml_str(
        "network = \"regtest\"\n[[nodes]]\nurl = \"127.0.0.1:18443\"\nuser = \"u\"\npass = \"p\"\n\
         [pool]\nallow_list = [\"203.0.113.7\", \"10.20.0.0/16\", \"2001:db8:aa::/48\"]\n",
    )
    .unwrap();
    farm.validate().unwrap();
    assert_eq!(farm.pool.allow_list.len(), 3);

    let cases: Vec<(&str, Spoil)> = vec![
        (
            "pool.allow_list[1]",
            Box::new(|c| c.pool.allow_list = vec!["10.0.0.0/8".into(), "farm".into()]),
        ),
        (
            "pool.allow_list[0]",
            Box::new(|c| c.pool.allow_list = vec!["10.1.2.3/16".into()]),
        ),
        (
            "pool.allow_list[0]",
            Box::new(|c| c.pool.allow_list = vec!["2001:db8::/129".into()]),
        ),
        ("pool.ip_table_size", Box::new(|c| c.pool.ip_table_size = 0)),
        (
            "pool.idle_timeout_s",
            Box::new(|c| c.pool.idle_timeout_s = 0),
        ),
        (
            "pool.wakeup_coalescing_us",
            Box::new(|c| c.pool.wakeup_coalescing_us = 10_001),
        ),
        (
            "pool.authorize_timeout_s",
            Box::new(|c| c.pool.authorize_timeout_s = 0),
        ),
        (
            "pool.ban_duration_s",
            Box::new(|c| c.pool.ban_duration_s = 365 * 86_400),
        ),
    ];
    for (key, spoil) in cases {
        let mut config = valid();
        spoil(&mut config);
        let error = config.validate().unwrap_err();
        assert_eq!(error.key, key, "{error}");
    }
    // 0 turns a count off; that is valid.
    let mut off = valid();
    off.pool.max_connects_per_minute_per_ip = 0;
    off.pool.ban_duration_s = 0;
    off.validate().unwrap();
}

#[test]
fn multi_region_keys_are_checked_and_imported_from_ckpool() {
    use tbg_config::RegionMode;
    // A relay needs the primary, the secret and its instance id.
    let mut relay = valid();
    relay.region.mode = RegionMode::Relay;
    assert_eq!(relay.validate().unwrap_err().key, "region.primary_url");
    relay.region.primary_url = Some("10.0.0.1:8881".into());
    assert_eq!(relay.validate().unwrap_err().key, "region.relay_secret");
    relay.apply_env(&env_of(&[("TBG_RELAY_SECRET", "short")]));
    let error = relay.validate().unwrap_err();
    assert_eq!(error.key, "region.relay_secret");
    assert!(
        !error.to_string().contains("short"),
        "the secret is not shown: {error}"
    );
    relay.apply_env(&env_of(&[(
        "TBG_RELAY_SECRET",
        "a long enough shared secret",
    )]));
    assert_eq!(relay.validate().unwrap_err().key, "region.instance_id");
    relay.region.instance_id = Some(2);
    relay.validate().unwrap();
    assert!(
        !format!("{relay:?}").contains("long enough"),
        "Debug hides the secret"
    );
    relay.pool.nonce1length = 2;
    assert_eq!(relay.validate().unwrap_err().key, "pool.nonce1length");
    relay.pool.nonce1length = 4;
    relay.region.failover_timeout_s = 3;
    assert_eq!(
        relay.validate().unwrap_err().key,
        "region.failover_timeout_s"
    );
    relay.region.failover_timeout_s = 10;
    relay.region.primary_url = Some("no-port".into());
    assert_eq!(relay.validate().unwrap_err().key, "region.primary_url");

    // NATS: the region becomes a subject token.
    let mut primary = valid();
    primary.apply_env(&env_of(&[("TBG_NATS_URL", "nats://127.0.0.1:4222")]));
    primary.region.instance_id = Some(1);
    primary.events.region = "eu west".into();
    assert_eq!(primary.validate().unwrap_err().key, "events.region");
    primary.events.region = "eu-west".into();
    primary.validate().unwrap();
    primary.nats.replicas = 0;
    assert_eq!(primary.validate().unwrap_err().key, "nats.replicas");
    primary.nats.replicas = 3;
    // Mutual TLS needs the certificate and its key.
    primary.nats.tls_cert_file = Some("/etc/tbg/nats.crt".into());
    assert_eq!(primary.validate().unwrap_err().key, "nats.tls_cert_file");
    primary.nats.tls_key_file = Some("/etc/tbg/nats.key".into());
    primary.validate().unwrap();
    // A cluster's servers, comma-separated; an empty entry is named.
    primary.nats.url = Some("nats://a:4222,nats://b:4222, nats://c:4222".into());
    primary.validate().unwrap();
    primary.nats.url = Some("nats://u:secret@a:4222,,nats://b:4222".into());
    let error = primary.validate().unwrap_err();
    assert_eq!(error.key, "nats.url");
    assert!(!error.to_string().contains("secret"), "{error}");

    // The reference system's ckpool keys.
    let (imported, warnings) = Config::from_ckpool_json(
        r#"{"btcd": [{"url": "127.0.0.1:18443", "auth": "u", "pass": "p"}],
            "mode": "relay", "primary_url": "10.0.0.1:8881", "failover_timeout": 12,
            "heartbeat_interval": 2, "instance_id": 3, "tbg_region": "us-east"}"#,
    )
    .unwrap();
    assert!(
        warnings.iter().all(|w| !w.contains("ignored")),
        "{warnings:?}"
    );
    assert_eq!(imported.region.mode, RegionMode::Relay);
    assert_eq!(
        imported.region.primary_url.as_deref(),
        Some("10.0.0.1:8881")
    );
    assert_eq!(
        (
            imported.region.failover_timeout_s,
            imported.region.heartbeat_s
        ),
        (12, 2)
    );
    assert_eq!(imported.region.instance_id, Some(3));
    let (primary, _) =
        Config::from_ckpool_json(r#"{"mode": "primary", "relay_port": 8881}"#).unwrap();
    assert_eq!(primary.region.relay_bind, "0.0.0.0:8881");
    let error = Config::from_ckpool_json(r#"{"mode": "secondary"}"#).unwrap_err();
    assert_eq!(error.key, "mode");
}

#[test]
fn the_operator_token_comes_from_the_environment_and_is_never_shown() {
    let mut config = valid();
    let applied = config.apply_env(&env_of(&[("TBG_METRICS_TOKEN", "short")]));
    assert_eq!(applied, ["TBG_METRICS_TOKEN"]);
    let error = config.validate().unwrap_err();
    assert_eq!(error.key, "metrics.token");
    assert!(!error.to_string().contains("short"), "{error}");
    config.metrics.token = Some("a token with spaces in it".into());
    let error = config.validate().unwrap_err();
    assert_eq!(
        error.key, "metrics.token",
        "a header cannot carry it unchanged"
    );
    let token = "0f4c9a2b7d1e8f3a6b5c4d2e1f0a9b8c";
    config.apply_env(&env_of(&[("TBG_METRICS_TOKEN", token)]));
    config.validate().unwrap();
    assert_eq!(config.metrics.token.as_deref(), Some(token));
    assert!(
        !format!("{config:?}").contains(token),
        "Debug hides the token"
    );
}
