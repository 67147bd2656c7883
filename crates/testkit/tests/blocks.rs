//! Blocks found through the pool are accepted by the kernel and pay the
//! miner who found them, for every address type.

use std::str::FromStr;
use std::time::Duration;

use bitcoin::BlockHash;
use tbg_pool::BlockStatus;
use tbg_testkit::{mine_shares, regtest_address, AddressKind, MinerConfig, TestEnv};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_address_type_gets_paid_for_its_block() {
    let env = TestEnv::start().await;
    let start_height = env.node.block_count();
    for (index, kind) in AddressKind::ALL.into_iter().enumerate() {
        let (address, script) = regtest_address(kind);
        let mut config = MinerConfig::new(env.stratum_addr(), format!("{address}.rig{index}"));
        config.max_blocks = Some(1);
        let (summary, _) = mine_shares(config, Duration::from_secs(60))
            .await
            .expect("miner runs");
        assert_eq!(summary.block_candidates, 1, "{kind:?}");

        env.wait_until("block accepted", Duration::from_secs(30), |env| {
            env.service
                .pool
                .blocks()
                .iter()
                .any(|b| b.user == address && b.status == BlockStatus::Accepted)
        })
        .await;
        let record = env
            .service
            .pool
            .blocks()
            .into_iter()
            .find(|b| b.user == address)
            .unwrap();
        let hash = BlockHash::from_str(&record.hash).unwrap();
        let block = env
            .node
            .get_block(&hash)
            .expect("the node has the block the pool submitted");
        let coinbase = &block.txdata[0];
        assert!(coinbase.is_coinbase());
        assert_eq!(
            coinbase.output[0].script_pubkey, script,
            "{kind:?}: block pays the finder"
        );
        assert_eq!(
            block.bip34_block_height().ok(),
            Some(u64::from(record.height))
        );
        assert!(block.check_witness_commitment(), "witness commitment valid");
        assert_eq!(coinbase.output[0].value.to_sat(), record.reward_sats);
    }
    assert_eq!(env.node.block_count(), start_height + 5);
    let found = env.events_of("block_found");
    assert_eq!(found.len(), 5);
    let submitted = env.events_of("block_submitted");
    assert_eq!(submitted.len(), 5);
    assert!(submitted
        .iter()
        .all(|e| matches!(&e.data, tbg_events::EventData::BlockSubmitted { accepted: true, answers, .. } if answers.len() == 1)));
    env.shutdown().await;
}
