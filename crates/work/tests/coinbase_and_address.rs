//! Coinbases built from Core's real getblocktemplate answer, for every
//! supported address type, and payout address checks.

mod common;

use std::sync::Arc;

use bitcoin::blockdata::script::Instruction;
use bitcoin::consensus::deserialize;
use bitcoin::hashes::Hash;
use bitcoin::key::{CompressedPublicKey, Secp256k1};
use bitcoin::opcodes::all::OP_PUSHNUM_5;
use bitcoin::script::Builder;
use bitcoin::secp256k1::SecretKey;
use bitcoin::{Address, Block, Network, ScriptBuf, Transaction};
use common::gbt_fixture;
use tbg_work::{
    build_coinbase, parse_payout_address, AddressError, Job, JobTemplate, Template, WorkError,
};

const EXTRANONCE1: [u8; 4] = [0x94, 0x10, 0x07, 0x6b];
const EXTRANONCE2: [u8; 8] = [1, 2, 3, 4, 5, 6, 7, 8];

/// One regtest address of each supported type, from a fixed key.
fn regtest_addresses() -> Vec<(&'static str, String)> {
    let secp = Secp256k1::new();
    let secret = SecretKey::from_slice(&[7u8; 32]).unwrap();
    let public = CompressedPublicKey(secret.public_key(&secp));
    let (xonly, _) = secret.public_key(&secp).x_only_public_key();
    let witness_script = Builder::new().push_opcode(OP_PUSHNUM_5).into_script();
    let network = Network::Regtest;
    vec![
        ("p2pkh", Address::p2pkh(public, network).to_string()),
        ("p2sh", Address::p2shwpkh(&public, network).to_string()),
        ("p2wpkh", Address::p2wpkh(&public, network).to_string()),
        (
            "p2wsh",
            Address::p2wsh(&witness_script, network).to_string(),
        ),
        (
            "p2tr",
            Address::p2tr(&secp, xonly, None, network).to_string(),
        ),
    ]
}

fn gbt_template() -> Template {
    Template::from_gbt(&gbt_fixture()).unwrap()
}

fn assembled(parts: &tbg_work::CoinbaseParts) -> Transaction {
    deserialize(&parts.assemble(&EXTRANONCE1, &EXTRANONCE2)).expect("coinbase decodes")
}

/// The scriptSig's pushes, in order.
fn pushes(tx: &Transaction) -> Vec<Vec<u8>> {
    tx.input[0]
        .script_sig
        .instructions()
        .map(|i| match i.unwrap() {
            Instruction::PushBytes(b) => b.as_bytes().to_vec(),
            Instruction::Op(op) => vec![op.to_u8()],
        })
        .collect()
}

#[test]
fn coinbase_for_every_address_type_is_valid() {
    let template = gbt_template();
    for (kind, address) in regtest_addresses() {
        let payout = parse_payout_address(&address, Network::Regtest).unwrap();
        for user_sig in [None, Some("rig-7")] {
            let parts = build_coinbase(&template, &payout, "tbg", user_sig, 4, 8).unwrap();
            let tx = assembled(&parts);
            assert!(tx.is_coinbase(), "{kind}");
            assert_eq!(tx.input.len(), 1);
            assert_eq!(tx.input[0].sequence.0, 0xffff_ffff);
            assert!(tx.input[0].witness.is_empty());
            assert!(tx.lock_time.to_consensus_u32() == 0);
            assert!(tx.version.0 == 1 || tx.version.0 == 2);
            let script_sig = tx.input[0].script_sig.as_bytes();
            assert!(
                script_sig.len() <= 100,
                "{kind}: {} bytes",
                script_sig.len()
            );
            // Core's BIP34 check: the scriptSig starts with CScript() << height.
            let expected_height = Builder::new().push_int(104).into_script();
            assert!(script_sig.starts_with(expected_height.as_bytes()), "{kind}");
            let pushes = pushes(&tx);
            assert_eq!(pushes.len(), 3, "{kind}: height, tag, extranonce");
            assert_eq!(bitcoin::script::read_scriptint(&pushes[0]).unwrap(), 104);
            let tag = match user_sig {
                Some(sig) => format!("tbg/{sig}"),
                None => "tbg".to_owned(),
            };
            assert_eq!(pushes[1], tag.as_bytes(), "{kind}");
            assert_eq!(
                pushes[2],
                [&EXTRANONCE1[..], &EXTRANONCE2[..]].concat(),
                "{kind}"
            );
            // coinb1 ends right before the extranonce and coinb2 starts right after.
            assert_eq!(
                parts.coinb1.last(),
                Some(&12u8),
                "{kind}: push opcode for 12 bytes"
            );
            assert_eq!(&parts.coinb2[..4], &[0xff; 4], "{kind}: sequence follows");

            assert_eq!(tx.output.len(), 2, "{kind}");
            assert_eq!(tx.output[0].script_pubkey, payout, "{kind}");
            assert_eq!(tx.output[0].value.to_sat(), 5_000_010_000, "{kind}");
            assert_eq!(tx.output[1].value.to_sat(), 0);
            assert_eq!(
                Some(&tx.output[1].script_pubkey),
                template.default_witness_commitment.as_ref()
            );
            assert!(parts.has_witness_commitment);
        }
    }
}

#[test]
fn small_heights_use_the_opcode_form_core_expects() {
    let payout = parse_payout_address(&regtest_addresses()[2].1, Network::Regtest).unwrap();
    for (height, prefix) in [
        (1u32, vec![0x51u8]),
        (16, vec![0x60]),
        (17, vec![0x01, 0x11]),
        (127, vec![0x01, 0x7f]),
        (128, vec![0x02, 0x80, 0x00]),
        (840_000, vec![0x03, 0x40, 0xd1, 0x0c]),
    ] {
        let mut template = gbt_template();
        template.height = height;
        let parts = build_coinbase(&template, &payout, "tbg", None, 4, 8).unwrap();
        let tx = assembled(&parts);
        let script_sig = tx.input[0].script_sig.as_bytes();
        assert!(
            script_sig.starts_with(&prefix),
            "height {height}: {script_sig:02x?}"
        );
        assert!(script_sig.len() >= 2, "Core's bad-cb-length lower bound");
    }
}

#[test]
fn long_tags_are_truncated_never_the_extranonce() {
    let template = gbt_template();
    let payout = parse_payout_address(&regtest_addresses()[4].1, Network::Regtest).unwrap();
    let long_sig = "é".repeat(80);
    let parts = build_coinbase(
        &template,
        &payout,
        "a-very-long-pool-tag",
        Some(&long_sig),
        8,
        16,
    )
    .unwrap();
    let tx = assembled_with(&parts, &[9u8; 8], &[8u8; 16]);
    // Filled to the limit, less at most one byte of a split 2-byte character.
    let len = tx.input[0].script_sig.len();
    assert!((99..=100).contains(&len), "{len}");
    let pushes = pushes(&tx);
    assert_eq!(pushes[2], [[9u8; 8].as_slice(), &[8u8; 16]].concat());
    let tag = String::from_utf8(pushes[1].clone()).expect("cut on a character boundary");
    assert!(tag.starts_with("a-very-long-pool-tag/é"));

    // 75 extranonce bytes fit; the scriptSig then has no room left for a tag.
    let err = build_coinbase(&template, &payout, "tbg", None, 40, 40).unwrap_err();
    assert_eq!(err, WorkError::ExtranonceLength(80));
    let parts = build_coinbase(&template, &payout, "tbg", None, 35, 40).unwrap();
    let tx = assembled_with(&parts, &[1u8; 35], &[2u8; 40]);
    assert!(tx.input[0].script_sig.len() <= 100);
    assert!(matches!(
        build_coinbase(&template, &payout, "tbg", None, 0, 0),
        Err(WorkError::ExtranonceLength(0))
    ));
}

fn assembled_with(parts: &tbg_work::CoinbaseParts, en1: &[u8], en2: &[u8]) -> Transaction {
    deserialize(&parts.assemble(en1, en2)).expect("coinbase decodes")
}

#[test]
fn template_without_commitment_gets_one_output_and_no_witness() {
    let mut template = gbt_template();
    template.default_witness_commitment = None;
    let payout = parse_payout_address(&regtest_addresses()[0].1, Network::Regtest).unwrap();
    let parts = build_coinbase(&template, &payout, "tbg", None, 4, 8).unwrap();
    assert!(!parts.has_witness_commitment);
    assert_eq!(assembled(&parts).output.len(), 1);
}

/// A share meeting the regtest target becomes a block rust-bitcoin accepts:
/// merkle root, witness commitment, proof of work, BIP34 height.
#[test]
fn found_block_from_core_template_is_valid() {
    let template = Arc::new(gbt_template());
    let payout = parse_payout_address(&regtest_addresses()[4].1, Network::Regtest).unwrap();
    let coinbase = build_coinbase(&template, &payout, "tbg", Some("w1"), 4, 8).unwrap();
    let job = Job {
        template: Arc::new(JobTemplate::new(template.clone())),
        coinbase: Arc::new(coinbase),
    };
    let version = job.template.version;
    let ntime = template.cur_time;
    let nonce = (0u32..1000)
        .find(|n| {
            job.check_share(&EXTRANONCE1, &EXTRANONCE2, ntime, *n, version)
                .meets_network
        })
        .expect("about half of all nonces meet the regtest target");
    let check = job.check_share(&EXTRANONCE1, &EXTRANONCE2, ntime, nonce, version);
    let bytes = job.block_bytes(&EXTRANONCE1, &EXTRANONCE2, ntime, nonce, version);
    let block: Block = deserialize(&bytes).expect("block decodes");
    assert_eq!(block.block_hash(), check.hash);
    assert_eq!(block.header.prev_blockhash, template.previous_block_hash);
    assert!(block.check_merkle_root());
    assert!(block.check_witness_commitment());
    assert!(block.header.validate_pow(block.header.target()).is_ok());
    assert_eq!(block.bip34_block_height().unwrap(), 104);
    assert_eq!(block.txdata.len(), 2);
    assert_eq!(
        block.txdata[1].compute_txid(),
        template.transactions[0].txid
    );
    assert_eq!(
        block.txdata[0].input[0].witness.to_vec(),
        vec![vec![0u8; 32]]
    );

    // A share that misses the network target is still hashed consistently.
    let miss = (0u32..1000)
        .find(|n| {
            !job.check_share(&EXTRANONCE1, &EXTRANONCE2, ntime, *n, version)
                .meets_network
        })
        .unwrap();
    let miss_check = job.check_share(&EXTRANONCE1, &EXTRANONCE2, ntime, miss, version);
    assert!(miss_check.share_difficulty < tbg_work::target_to_difficulty(&template.target));
    assert_ne!(miss_check.hash, bitcoin::BlockHash::all_zeros());
}

#[test]
fn addresses_of_each_type_parse_on_their_networks() {
    for (kind, address) in regtest_addresses() {
        let script = parse_payout_address(&address, Network::Regtest)
            .unwrap_or_else(|e| panic!("{kind} {address}: {e}"));
        let expected: ScriptBuf = address
            .parse::<Address<_>>()
            .unwrap()
            .assume_checked()
            .script_pubkey();
        assert_eq!(script, expected, "{kind}");
        let bech32_regtest = address.starts_with("bcrt1");
        for network in [Network::Testnet, Network::Testnet4, Network::Signet] {
            // Base58 test addresses are shared; bcrt1 is regtest only.
            assert_eq!(
                parse_payout_address(&address, network).is_ok(),
                !bech32_regtest,
                "{kind} on {network}"
            );
        }
        assert!(matches!(
            parse_payout_address(&address, Network::Bitcoin),
            Err(AddressError::WrongNetwork { .. })
        ));
    }
}

#[test]
fn mainnet_and_testnet_addresses_are_checked_against_the_network() {
    let mainnet = [
        "1BvBMSEYstWetqTFn5Au4m4GFg7xJaNVN2",
        "3J98t1WpEZ73CNmQviecrnyiWrnqRhWNLy",
        "bc1qar0srrr7xfkvy5l643lydnw9re59gtzzwf5mdq",
        "bc1qrp33g0q5c5txsp9arysrx4k6zdkfs4nce4xj0gdcccefvpysxf3qccfmv3",
        "bc1p5d7rjq7g6rdk2yhzks9smlaqtedr4dekq08ge8ztwac72sfr9rusxg3297",
    ];
    for address in mainnet {
        assert!(
            parse_payout_address(address, Network::Bitcoin).is_ok(),
            "{address}"
        );
        assert!(matches!(
            parse_payout_address(address, Network::Regtest),
            Err(AddressError::WrongNetwork { .. })
        ));
    }
    let testnet = "tb1qw508d6qejxtdg4y5r3zarvary0c5xw7kxpjzsx";
    assert!(parse_payout_address(testnet, Network::Testnet).is_ok());
    assert!(parse_payout_address(testnet, Network::Signet).is_ok());
    assert!(parse_payout_address(testnet, Network::Regtest).is_err());
    assert!(parse_payout_address(testnet, Network::Bitcoin).is_err());
}

#[test]
fn malformed_addresses_are_rejected() {
    assert_eq!(
        parse_payout_address("", Network::Regtest),
        Err(AddressError::Empty)
    );
    let long = "b".repeat(91);
    assert_eq!(
        parse_payout_address(&long, Network::Bitcoin),
        Err(AddressError::TooLong { len: 91 })
    );
    for bad in [
        "not-an-address",
        "1BvBMSEYstWetqTFn5Au4m4GFg7xJaNVN3", // bad checksum
        " 1BvBMSEYstWetqTFn5Au4m4GFg7xJaNVN2",
        "bc1qar0srrr7xfkvy5l643lydnw9re59gtzzwf5mdx",
    ] {
        assert!(
            matches!(
                parse_payout_address(bad, Network::Bitcoin),
                Err(AddressError::Invalid { .. })
            ),
            "{bad}"
        );
    }
    // Pay-to-anchor is a valid address but not a payout type.
    assert!(matches!(
        parse_payout_address("bc1pfeessrawgf", Network::Bitcoin),
        Err(AddressError::UnsupportedType { .. })
    ));
}
