//! The plan's smoke profile against the real pool and node: every share
//! answered, no error of any kind.

use tbg_loadtest::{ChannelChoice, LoadConfig, Profile, V2Load};
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
    // The pool counted what the tool saw, and the shares still in flight
    // at the deadline, which it judged after the tool stopped listening.
    let pool_rejected = env.service.pool.status().shares_rejected;
    let unanswered = report.shares_sent - report.shares_answered;
    assert!(
        (rejected..=rejected + unanswered).contains(&pool_rejected),
        "pool {pool_rejected}, tool {rejected} + {unanswered} unanswered"
    );
    env.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v2_load_on_the_shared_port_every_share_answered_and_no_errors() {
    let key = tbg_sv2::AuthorityKey::generate();
    let port_key = key.clone();
    let env = TestEnv::start_with(move |settings| {
        settings.max_invalid_shares_per_minute = u32::MAX;
        settings.sv2 = Some(tbg_pool::sv2::Sv2Settings::on_v1_port(port_key));
    })
    .await;
    let addresses = AddressKind::ALL
        .iter()
        .map(|kind| regtest_address(*kind).0)
        .collect::<Vec<_>>();
    let (mut rejected_in_all, mut unanswered_in_all) = (0, 0);
    for channel in [
        ChannelChoice::Standard,
        ChannelChoice::Extended {
            min_extranonce_size: 4,
        },
    ] {
        let mut config = LoadConfig::new(env.stratum_addr(), addresses.clone());
        Profile::Smoke.apply(&mut config);
        config.duration = std::time::Duration::from_secs(5);
        config.shares_per_second = 20.0;
        config.window = 2;
        config.invalid_fraction = 0.1;
        config.sv2 = Some(V2Load {
            authority_key: key.public_bytes(),
            channel,
        });
        let report = tbg_loadtest::run(config, |_| {}).await;
        assert_eq!(report.connected, 10, "{channel:?}");
        assert!(report.errors.is_empty(), "{channel:?}: {:?}", report.errors);
        assert!(
            report.shares_sent > 500,
            "{channel:?}: {}",
            report.to_text()
        );
        assert!(
            report.shares_sent - report.shares_answered <= 20,
            "{channel:?}: {}",
            report.to_text()
        );
        let rejected: u64 = report.rejected.values().sum();
        assert_eq!(report.accepted + rejected, report.shares_answered);
        for code in ["difficulty-too-low", "invalid-job-id"] {
            assert!(
                report.rejected.get(code).copied().unwrap_or(0) > 0,
                "{channel:?}: {:?}",
                report.rejected
            );
        }
        rejected_in_all += rejected;
        unanswered_in_all += report.shares_sent - report.shares_answered;
    }
    assert!(
        env.service.pool.blocks().is_empty(),
        "random shares are not blocks"
    );
    // What the tool saw, and what was in flight at each run's deadline.
    let pool_rejected = env.service.pool.status().shares_rejected;
    assert!(
        (rejected_in_all..=rejected_in_all + unanswered_in_all).contains(&pool_rejected),
        "pool {pool_rejected}, tool {rejected_in_all} + {unanswered_in_all} unanswered"
    );
    env.shutdown().await;
}
