//! A share is answered only once its event is in the durable journal.

use serde_json::json;
use tbg_testkit::{regtest_address, AddressKind, ManualMiner, TestEnv};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_miner_hears_accepted_only_after_the_share_is_journaled() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("events.db");
    let journal = tbg_journal::Journal::open(tbg_journal::JournalConfig::new(&path)).unwrap();
    let env = TestEnv::start_with_journal(journal).await;
    let reader = tbg_journal::JournalReader::open(&path).unwrap();
    let (address, _) = regtest_address(AddressKind::P2wpkh);
    let mut miner = ManualMiner::connect(env.stratum_addr(), &format!("{address}.rig")).await;
    for counter in 1..=5u64 {
        // Keep the chain still so every share lands on the same job.
        if counter == 1 {
            env.node.stop_rpc().await;
        }
        let reply = miner.submit_valid(counter).await;
        assert_eq!(reply.result, json!(true), "{:?}", reply.error);
        // The reply is out: the event must already be readable by another process.
        let records = reader.read_after(0, 10_000).unwrap();
        let accepted = records
            .iter()
            .filter_map(|r| r.event().ok())
            .filter(|e| {
                matches!(&e.data, tbg_events::EventData::ShareSubmitted { accepted: true, user, .. } if *user == address)
            })
            .count();
        assert_eq!(
            accepted as u64, counter,
            "accepted shares journaled before the reply"
        );
    }
    let records = reader.read_after(0, 10_000).unwrap();
    let types: Vec<&str> = records.iter().map(|r| r.event_type.as_str()).collect();
    assert!(types.contains(&"miner_connected"));
    assert!(types.contains(&"new_block_network"));
    // Ids are unique and seqs increase.
    let mut ids: Vec<&str> = records.iter().map(|r| r.event_id.as_str()).collect();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), records.len());
    assert!(records.windows(2).all(|w| w[0].seq < w[1].seq));
    env.node.start_rpc().await.unwrap();
    drop(miner);
    env.shutdown().await;
    // Shutdown committed the disconnect too.
    let records = reader.read_after(0, 10_000).unwrap();
    assert!(records.iter().any(|r| r.event_type == "miner_disconnected"));
}
