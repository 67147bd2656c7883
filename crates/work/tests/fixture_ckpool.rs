//! Pins byte order against a real ckpool + cpuminer session whose blocks
//! Bitcoin Core accepted.

mod common;

use std::str::FromStr;
use std::sync::Arc;

use bitcoin::consensus::{deserialize, serialize};
use bitcoin::hashes::{sha256d, Hash};
use bitcoin::{Block, BlockHash, Transaction};
use common::{hex_u32, stratum_fixture};
use serde_json::{json, Value};
use tbg_work::{CoinbaseParts, Job, JobTemplate, NotifyParts, Template};

struct Case {
    height: u32,
    notify: Vec<Value>,
    extranonce2: Vec<u8>,
    ntime: u32,
    nonce: u32,
    block_bytes: Vec<u8>,
    block: Block,
    accepted_hash: BlockHash,
}

fn cases() -> (Vec<u8>, Vec<Case>) {
    let fixture = stratum_fixture();
    let extranonce1 =
        hex::decode(fixture["subscribe_result"]["result"][1].as_str().unwrap()).unwrap();
    let cases = fixture["cases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|case| {
            let submit = case["submit"]["params"].as_array().unwrap();
            let block_bytes = hex::decode(case["accepted_block_hex"].as_str().unwrap()).unwrap();
            Case {
                height: case["height"].as_u64().unwrap() as u32,
                notify: case["notify"]["params"].as_array().unwrap().clone(),
                extranonce2: hex::decode(submit[2].as_str().unwrap()).unwrap(),
                ntime: hex_u32(submit[3].as_str().unwrap()),
                nonce: hex_u32(submit[4].as_str().unwrap()),
                block: deserialize(&block_bytes).unwrap(),
                block_bytes,
                accepted_hash: BlockHash::from_str(case["accepted_block_hash"].as_str().unwrap())
                    .unwrap(),
            }
        })
        .collect();
    (extranonce1, cases)
}

fn job_from_notify(case: &Case, extranonce_len: usize) -> Job {
    let p = &case.notify;
    let branch: Vec<String> = p[4]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h.as_str().unwrap().to_owned())
        .collect();
    let parts = NotifyParts {
        height: case.height,
        prevhash: p[1].as_str().unwrap(),
        merkle_branch: &branch,
        version: p[5].as_str().unwrap(),
        nbits: p[6].as_str().unwrap(),
        ntime: p[7].as_str().unwrap(),
    };
    let transactions: Vec<Vec<u8>> = case.block.txdata[1..].iter().map(serialize).collect();
    let coinbase = CoinbaseParts::new(
        hex::decode(p[2].as_str().unwrap()).unwrap(),
        hex::decode(p[3].as_str().unwrap()).unwrap(),
        extranonce_len,
    )
    .unwrap();
    Job {
        template: Arc::new(JobTemplate::from_notify_parts(&parts, &transactions).unwrap()),
        coinbase: Arc::new(coinbase),
    }
}

fn without_witness(tx: &Transaction) -> Vec<u8> {
    let mut stripped = tx.clone();
    for input in &mut stripped.input {
        input.witness.clear();
    }
    serialize(&stripped)
}

#[test]
fn recorded_shares_hash_to_the_accepted_blocks() {
    let (extranonce1, cases) = cases();
    assert_eq!(cases.len(), 2);
    for case in &cases {
        let job = job_from_notify(case, extranonce1.len() + case.extranonce2.len());
        let version = job.template.version;
        let check = job.check_share(
            &extranonce1,
            &case.extranonce2,
            case.ntime,
            case.nonce,
            version,
        );
        let header_hash = BlockHash::from_raw_hash(sha256d::Hash::hash(&case.block_bytes[..80]));
        assert_eq!(header_hash, case.accepted_hash, "fixture self-consistency");
        assert_eq!(check.hash, case.accepted_hash, "height {}", case.height);
        assert!(
            check.meets_network,
            "an accepted block meets the network target"
        );
        assert!(
            check.share_difficulty >= 1.0,
            "cpuminer mined at difficulty 1"
        );

        let coinbase = job.coinbase.assemble(&extranonce1, &case.extranonce2);
        assert_eq!(
            coinbase,
            without_witness(&case.block.txdata[0]),
            "height {}",
            case.height
        );
        assert!(job.coinbase.has_witness_commitment);

        let block = job.block_bytes(
            &extranonce1,
            &case.extranonce2,
            case.ntime,
            case.nonce,
            version,
        );
        assert_eq!(
            hex::encode(&block),
            hex::encode(&case.block_bytes),
            "height {}",
            case.height
        );
        assert_eq!(
            job.block_hex(
                &extranonce1,
                &case.extranonce2,
                case.ntime,
                case.nonce,
                version
            ),
            hex::encode(&case.block_bytes)
        );
        assert_eq!(
            job.template.previous_block_hash,
            case.block.header.prev_blockhash
        );
    }
}

#[test]
fn a_wrong_nonce_does_not_give_the_block_hash() {
    let (extranonce1, cases) = cases();
    let case = &cases[0];
    let job = job_from_notify(case, extranonce1.len() + case.extranonce2.len());
    let check = job.check_share(
        &extranonce1,
        &case.extranonce2,
        case.ntime,
        case.nonce ^ 1,
        job.template.version,
    );
    assert_ne!(check.hash, case.accepted_hash);
}

/// A template with the contents of a recorded block, as Core would have sent it.
fn gbt_for(case: &Case, previous: &BlockHash) -> Value {
    let transactions: Vec<Value> = case.block.txdata[1..]
        .iter()
        .map(|tx| {
            json!({
                "data": hex::encode(serialize(tx)),
                "txid": tx.compute_txid().to_string(),
                "hash": tx.compute_wtxid().to_string(),
                "fee": 10000,
            })
        })
        .collect();
    let coinbase_value: u64 = case.block.txdata[0]
        .output
        .iter()
        .map(|o| o.value.to_sat())
        .sum();
    json!({
        "version": case.block.header.version.to_consensus(),
        "previousblockhash": previous.to_string(),
        "transactions": transactions,
        "coinbasevalue": coinbase_value,
        "target": "7fffff0000000000000000000000000000000000000000000000000000000000",
        "mintime": case.ntime - 100,
        "curtime": hex_u32(case.notify[7].as_str().unwrap()),
        "bits": case.notify[6],
        "height": case.height,
    })
}

#[test]
fn template_notify_fields_match_what_ckpool_sent() {
    let (_, cases) = cases();
    for case in &cases {
        let template =
            Template::from_gbt(&gbt_for(case, &case.block.header.prev_blockhash)).unwrap();
        let job_template = JobTemplate::new(Arc::new(template));
        let notify = &case.notify;
        assert_eq!(
            job_template.prevhash_hex,
            notify[1].as_str().unwrap(),
            "prevhash"
        );
        let branch: Vec<&str> = notify[4]
            .as_array()
            .unwrap()
            .iter()
            .map(|h| h.as_str().unwrap())
            .collect();
        assert_eq!(job_template.merkle_branch_hex, branch, "merkle branch");
        assert_eq!(job_template.version_hex, notify[5].as_str().unwrap());
        assert_eq!(job_template.nbits_hex, notify[6].as_str().unwrap());
        assert_eq!(job_template.ntime_hex, notify[7].as_str().unwrap());
        assert_eq!(
            job_template.transaction_count(),
            case.block.txdata.len() - 1
        );
    }
}

#[test]
fn case_103_prevhash_is_case_102_block_in_stratum_order() {
    let (_, cases) = cases();
    // Block 103 builds on the accepted block 102.
    let template = Template::from_gbt(&gbt_for(&cases[1], &cases[0].accepted_hash)).unwrap();
    let job_template = JobTemplate::new(Arc::new(template));
    assert_eq!(
        job_template.prevhash_hex,
        cases[1].notify[1].as_str().unwrap()
    );
}
