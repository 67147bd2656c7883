//! The miner's header building against a real ckpool–cpuminer session and
//! the blocks Bitcoin Core accepted from it.

use serde_json::Value;
use tbg_miner::{sha256d, MinerJob};

fn fixture() -> Value {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../fixtures/stratum-ckpool-cpuminer-regtest.json"
    );
    serde_json::from_str(&std::fs::read_to_string(path).expect("fixture readable"))
        .expect("fixture is JSON")
}

#[test]
fn headers_built_from_recorded_notify_match_accepted_blocks() {
    let fixture = fixture();
    let extranonce1 =
        hex::decode(fixture["subscribe_result"]["result"][1].as_str().unwrap()).unwrap();
    let cases = fixture["cases"].as_array().unwrap();
    assert!(!cases.is_empty());
    for case in cases {
        let job = MinerJob::from_notify_params(&case["notify"]["params"]).unwrap();
        let submit = &case["submit"]["params"];
        let extranonce2 = hex::decode(submit[2].as_str().unwrap()).unwrap();
        let ntime = u32::from_str_radix(submit[3].as_str().unwrap(), 16).unwrap();
        let nonce = u32::from_str_radix(submit[4].as_str().unwrap(), 16).unwrap();
        let block = hex::decode(case["accepted_block_hex"].as_str().unwrap()).unwrap();

        let root = job.merkle_root(&extranonce1, &extranonce2);
        let header = job.header(&root, ntime, nonce, job.version);
        assert_eq!(
            &header[..],
            &block[..80],
            "header of height {}",
            case["height"]
        );
        let hash = sha256d(&header);
        assert_eq!(hash, sha256d(&block[..80]));
        assert!(
            tbg_miner::hash_difficulty(&hash) >= 1.0,
            "the recorded share met difficulty 1"
        );
    }
}
