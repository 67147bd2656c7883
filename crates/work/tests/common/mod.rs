#![allow(dead_code)]

use serde_json::Value;

pub fn stratum_fixture() -> Value {
    let text = include_str!(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../fixtures/stratum-ckpool-cpuminer-regtest.json"
    ));
    serde_json::from_str(text).expect("stratum fixture is JSON")
}

/// The getblocktemplate `result` from the RPC fixture.
pub fn gbt_fixture() -> Value {
    let text = include_str!(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../fixtures/bitcoin-core-rpc-regtest.json"
    ));
    let all: Value = serde_json::from_str(text).expect("rpc fixture is JSON");
    all["calls"]
        .as_array()
        .expect("calls")
        .iter()
        .find(|c| c["method"] == "getblocktemplate")
        .expect("getblocktemplate call")["response"]["result"]
        .clone()
}

pub fn hex_u32(text: &str) -> u32 {
    u32::from_str_radix(text, 16).expect("hex u32")
}
