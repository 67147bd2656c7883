//! getblocktemplate parsing: Core's real answer, and a bad field is an error
//! naming that field.

mod common;

use std::str::FromStr;

use bitcoin::{BlockHash, Txid};
use common::gbt_fixture;
use serde_json::{json, Value};
use tbg_work::{Template, TemplateError};

#[test]
fn core_answer_parses() {
    let t = Template::from_gbt(&gbt_fixture()).unwrap();
    assert_eq!(t.height, 104);
    assert_eq!(t.version, 0x2000_0000);
    assert_eq!(
        t.previous_block_hash,
        BlockHash::from_str("000000000d92b62c63afe4af75ac643c6c4838eefd3e1cd234edcb170e8f3241")
            .unwrap()
    );
    assert_eq!(t.bits.to_consensus(), 0x207f_ffff);
    assert_eq!(t.cur_time, 1_795_625_297);
    assert_eq!(t.min_time, 1_795_625_126);
    assert_eq!(t.coinbase_value, 5_000_010_000);
    assert_eq!(t.transactions.len(), 1);
    assert_eq!(
        t.transactions[0].txid,
        Txid::from_str("e51516b5917177d30a20d6cbd4f211e2faeb7b2e9aaabf93fde9281b9867dac2").unwrap()
    );
    assert_eq!(t.transactions[0].fee, 10_000);
    assert_eq!(
        hex::encode(t.default_witness_commitment.as_ref().unwrap().as_bytes()),
        "6a24aa21a9ed3737146cc54eaa59d4460595e81058fff2e9b5d4bd6b200007d577c8a8639f0e"
    );
    assert_eq!(
        hex::encode(t.target.to_be_bytes()),
        "7fffff".to_owned() + &"0".repeat(58)
    );
}

fn with(path: &[&str], value: Value) -> Value {
    let mut gbt = gbt_fixture();
    let mut slot = &mut gbt;
    for key in path {
        slot = match key.parse::<usize>() {
            Ok(i) => &mut slot[i],
            Err(_) => &mut slot[*key],
        };
    }
    *slot = value;
    gbt
}

fn without(key: &str) -> Value {
    let mut gbt = gbt_fixture();
    gbt.as_object_mut().unwrap().remove(key);
    gbt
}

fn error_field(err: TemplateError) -> String {
    match err {
        TemplateError::Missing(field) | TemplateError::Invalid { field, .. } => field,
        TemplateError::NotAnObject => "<root>".into(),
    }
}

#[test]
fn missing_required_fields_are_named() {
    for key in [
        "height",
        "version",
        "previousblockhash",
        "bits",
        "curtime",
        "coinbasevalue",
        "transactions",
    ] {
        let err = Template::from_gbt(&without(key)).unwrap_err();
        assert_eq!(err, TemplateError::Missing(key.into()));
        assert!(err.to_string().contains(key));
    }
    // Optional ones have defaults.
    let t = Template::from_gbt(&without("mintime")).unwrap();
    assert_eq!(t.min_time, t.cur_time);
    assert!(Template::from_gbt(&without("default_witness_commitment"))
        .unwrap()
        .default_witness_commitment
        .is_none());
    assert!(Template::from_gbt(&without("target")).is_ok());
}

#[test]
fn bad_values_are_errors_naming_the_field() {
    let cases: Vec<(Value, &str)> = vec![
        (with(&["height"], json!(-1)), "height"),
        (with(&["height"], json!(0)), "height"),
        (with(&["height"], json!(1u64 << 40)), "height"),
        (with(&["height"], json!("104")), "height"),
        (with(&["version"], json!(1u64 << 33)), "version"),
        (
            with(&["previousblockhash"], json!("00ff")),
            "previousblockhash",
        ),
        (with(&["previousblockhash"], json!(12)), "previousblockhash"),
        (with(&["bits"], json!("207fff")), "bits"),
        (with(&["bits"], json!("zz7fffff")), "bits"),
        (with(&["curtime"], json!(1.5)), "curtime"),
        (with(&["mintime"], json!(-3)), "mintime"),
        (with(&["coinbasevalue"], json!(-1)), "coinbasevalue"),
        (
            with(&["coinbasevalue"], json!(2_100_000_000_000_001u64)),
            "coinbasevalue",
        ),
        (with(&["target"], json!("00ff")), "target"),
        (
            with(&["target"], json!("7ffffe".to_owned() + &"0".repeat(58))),
            "target",
        ),
        (
            with(&["default_witness_commitment"], json!("6a")),
            "default_witness_commitment",
        ),
        (
            with(&["default_witness_commitment"], json!("xyz")),
            "default_witness_commitment",
        ),
        (with(&["transactions"], json!({})), "transactions"),
        (with(&["transactions", "0"], json!("tx")), "transactions[0]"),
        (
            with(&["transactions", "0", "data"], json!("0200")),
            "transactions[0].data",
        ),
        (
            with(&["transactions", "0", "data"], json!("zz")),
            "transactions[0].data",
        ),
        (
            with(&["transactions", "0", "txid"], json!("11".repeat(32))),
            "transactions[0].txid",
        ),
        (
            with(&["transactions", "0", "hash"], json!("11".repeat(32))),
            "transactions[0].hash",
        ),
        (
            with(&["transactions", "0", "fee"], json!("lots")),
            "transactions[0].fee",
        ),
    ];
    for (gbt, field) in cases {
        let err = Template::from_gbt(&gbt).unwrap_err();
        assert_eq!(error_field(err.clone()), field, "{err}");
    }
    let mut no_data = gbt_fixture();
    no_data["transactions"][0]
        .as_object_mut()
        .unwrap()
        .remove("data");
    assert_eq!(
        Template::from_gbt(&no_data).unwrap_err(),
        TemplateError::Missing("transactions[0].data".into())
    );
    assert_eq!(
        Template::from_gbt(&json!([1, 2])).unwrap_err(),
        TemplateError::NotAnObject
    );
}
