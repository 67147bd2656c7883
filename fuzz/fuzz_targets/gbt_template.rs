//! A node's getblocktemplate answer (the `result` object, as JSON text)
//! into the pool's work: `Template::from_gbt`, then the job, a coinbase and
//! the block a miner's share would make.
//!
//! Asserts, besides "never panics": a refusal names its field; an accepted
//! template keeps its promises (height >= 1, target = bits expanded, value
//! within 21 M BTC, every transaction decodes, is no coinbase and has the
//! txid and wtxid the node claimed, the witness commitment is one); and the
//! block assembled from it is one Bitcoin decodes whole, whose header hash
//! is the share hash the pool computes, whose merkle root (recomputed by
//! `bitcoin` over all transactions) is the one the pool's branch gives,
//! whose first transaction is the coinbase paying the template's value and
//! whose other transactions are the template's, in order.
#![no_main]

use std::sync::Arc;

use bitcoin::consensus::deserialize;
use bitcoin::hashes::Hash;
use bitcoin::{Block, ScriptBuf, Target, Transaction};
use libfuzzer_sys::fuzz_target;
use serde_json::Value;
use tbg_work::{build_coinbase, Job, JobTemplate, Template, TemplateError};

const MAX_MONEY_SAT: u64 = 21_000_000 * 100_000_000;
const EXTRANONCE1: [u8; 4] = [0x94, 0x10, 0x07, 0x6b];
const EXTRANONCE2: [u8; 8] = [0, 0, 0, 0, 0, 0, 0, 1];

fuzz_target!(|data: &[u8]| {
    let Ok(json) = serde_json::from_slice::<Value>(data) else {
        return;
    };
    // A whole JSON-RPC answer is unwrapped the way the node client does.
    let gbt = json
        .get("result")
        .filter(|r| r.is_object())
        .unwrap_or(&json);
    match Template::from_gbt(gbt) {
        Ok(template) => check_template(template),
        Err(TemplateError::NotAnObject) => assert!(!gbt.is_object()),
        Err(TemplateError::Missing(field)) | Err(TemplateError::Invalid { field, .. }) => {
            assert!(!field.is_empty(), "a refusal names its field");
        }
    }
});

fn check_template(template: Template) {
    assert!(template.height >= 1);
    assert_eq!(template.target, Target::from_compact(template.bits));
    assert!(template.coinbase_value <= MAX_MONEY_SAT);
    for tx in &template.transactions {
        let decoded: Transaction = deserialize(&tx.data).expect("accepted tx decodes");
        assert!(!decoded.is_coinbase());
        assert_eq!(decoded.compute_txid(), tx.txid);
        assert_eq!(decoded.compute_wtxid(), tx.wtxid);
    }
    if let Some(commitment) = &template.default_witness_commitment {
        let bytes = commitment.as_bytes();
        assert!(bytes.len() >= 38 && bytes.starts_with(&[0x6a, 0x24, 0xaa, 0x21, 0xa9, 0xed]));
    }

    let template = Arc::new(template);
    let job_template = Arc::new(JobTemplate::new(template.clone()));
    // A P2WPKH payout; which address does not matter here.
    let mut payout = vec![0x00, 0x14];
    payout.extend_from_slice(&[0x42; 20]);
    let payout = ScriptBuf::from_bytes(payout);
    let coinbase = build_coinbase(
        &template,
        &payout,
        "/tbg/",
        Some("fuzz"),
        EXTRANONCE1.len(),
        EXTRANONCE2.len(),
    )
    .expect("a valid template always gets a coinbase");
    let job = Job {
        template: job_template,
        coinbase: Arc::new(coinbase),
    };
    let ntime = template.cur_time;
    let nonce = 0x8c36_95ae;
    let version = template.version as u32;
    let bytes = job.block_bytes(&EXTRANONCE1, &EXTRANONCE2, ntime, nonce, version);
    let block: Block = deserialize(&bytes).expect("the assembled block decodes whole");
    let header = block.header;
    assert_eq!(header.prev_blockhash, template.previous_block_hash);
    assert_eq!(header.bits, template.bits);
    assert_eq!((header.time, header.nonce), (ntime, nonce));
    assert_eq!(header.version.to_consensus(), template.version);
    let share = job.check_share(&EXTRANONCE1, &EXTRANONCE2, ntime, nonce, version);
    assert_eq!(
        share.hash,
        header.block_hash(),
        "share hash is the block hash"
    );
    assert_eq!(
        share.meets_network,
        template.target.is_met_by(header.block_hash())
    );
    assert_eq!(
        block.compute_merkle_root(),
        Some(header.merkle_root),
        "the pool's merkle branch gives the block's merkle root"
    );
    assert_eq!(block.txdata.len(), template.transactions.len() + 1);
    let coinbase = &block.txdata[0];
    assert!(coinbase.is_coinbase());
    assert_eq!(
        coinbase.compute_txid().to_byte_array(),
        job.coinbase_hash(&EXTRANONCE1, &EXTRANONCE2)
    );
    assert_eq!(coinbase.output[0].value.to_sat(), template.coinbase_value);
    assert_eq!(coinbase.output[0].script_pubkey, payout);
    assert!(coinbase.input[0].script_sig.len() <= 100);
    let committed = template.default_witness_commitment.is_some();
    assert_eq!(coinbase.input[0].witness.len(), usize::from(committed));
    for (tx, expected) in block.txdata[1..].iter().zip(&template.transactions) {
        assert_eq!(tx.compute_txid(), expected.txid);
    }
}
