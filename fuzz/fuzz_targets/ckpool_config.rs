//! A config text as `tbg_config::load` reads it (without the file): a text
//! starting with `{` is a ckpool JSON config (`Config::from_ckpool_json`),
//! anything else our TOML; then the environment overrides (none) and
//! `validate`.
//!
//! Asserts, besides "never panics": the answer is a config or an error with
//! a reason; an error never quotes a node password (it did, for a TOML
//! password written without quotes: fixed); a config that validates
//! prints as TOML (`tbg check-config`) that reads back to the same config,
//! which validates again (a ckpool file's network still the node's to
//! say).
#![no_main]

use libfuzzer_sys::fuzz_target;
use tbg_config::{Config, ConfigError};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let parsed = if text.trim_start().starts_with('{') {
        Config::from_ckpool_json(text).map(|(config, warnings)| {
            assert!(warnings.iter().all(|warning| !warning.is_empty()));
            config
        })
    } else {
        Config::from_toml_str(text)
    };
    let mut config = match parsed {
        Ok(config) => config,
        Err(error) => return check_error(&error),
    };
    assert!(config.apply_env(&|_| None).is_empty());
    if let Err(error) = config.validate() {
        return check_error(&error);
    }
    let printed = config
        .to_toml_string()
        .expect("a valid config prints as TOML");
    let mut reread = Config::from_toml_str(&printed)
        .unwrap_or_else(|error| panic!("printed config does not read back: {error}\n{printed}"));
    // A ckpool file without a network: the TOML carries the rpc port's
    // guess, and `tbg check-config` says the node settles it (the flag is
    // not a TOML key).
    reread.network_from_node = config.network_from_node;
    assert!(
        reread == config,
        "printed config reads back different:\n{printed}"
    );
    reread.validate().expect("the printed config validates");
});

fn check_error(error: &ConfigError) {
    assert!(!error.reason.trim().is_empty(), "an error without a reason");
    assert!(!error.to_string().is_empty());
    // A node password (ckpool's btcd[N].pass, our nodes[N].pass) is never
    // quoted back, in the value or in the reason.
    if is_password_key(&error.key) {
        assert!(
            error.value.is_empty(),
            "password quoted in an error: {error}"
        );
        assert!(
            !error.reason.contains(['`', '"']),
            "password quoted in an error: {error}"
        );
    }
}

fn is_password_key(key: &str) -> bool {
    let Some((table, rest)) = key.split_once('[') else {
        return false;
    };
    let index = rest.strip_suffix("].pass").unwrap_or("x");
    matches!(table, "nodes" | "btcd") && index.bytes().all(|b| b.is_ascii_digit())
}
