//! The plan's smoke profile against the real pool and node: every share
//! answered, no error of any kind.

use tbg_loadtest::{LoadConfig, Profile};
use tbg_testkit::{regtest_address, AddressKind, TestEnv};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smoke_profile_every_share_answered_and_no_errors() {
    // Random-nonce shares are invalid by design: lift the per-connection
    // invalid-share limit that would otherwise (rightly) disconnect them.
    let env =
        TestEnv::start_with(|settings| settings.max_invalid_shares_per_minute = u32::MAX).await;
    let addresses = AddressKind::ALL
        .iter()
        .map(|kind| regtest_address(*kind).0)
        .collect();
    let mut config = LoadConfig::new(env.stratum_addr(), addresses);
    Profile::Smoke.apply(&mut config);
    config.shares_per_second = 5.0;
    config.invalid_fraction = 0.1;
    let report = tbg_loadtest::run(config, |_| {}).await;
    assert_eq!(report.connected, 10);
    assert_eq!(report.peak_connections, 10);
    assert!(report.errors.is_empty(), "errors: {:?}", report.errors);
    assert!(report.shares_sent > 1000, "{}", report.to_text());
    // Every share sent was answered, except at most one in flight per miner at the deadline.
    assert!(
        report.shares_sent - report.shares_answered <= 10,
        "{}",
        report.to_text()
    );
    let rejected: u64 = report.rejected.values().sum();
    assert_eq!(report.accepted + rejected, report.shares_answered);
    assert!(
        report.rejected.get("Above target").copied().unwrap_or(0) > 0,
        "{:?}",
        report.rejected
    );
    assert!(
        report.rejected.get("Invalid JobID").copied().unwrap_or(0) > 0,
        "{:?}",
        report.rejected
    );
    assert_eq!(
        env.service.pool.blocks().len() as u64,
        report.accepted,
        "random shares are not blocks"
    );
    // The pool counted what the tool saw.
    let status = env.service.pool.status();
    assert_eq!(status.shares_rejected, rejected);
    env.shutdown().await;
}
