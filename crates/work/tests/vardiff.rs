//! Vardiff driven by simulated miners: share arrivals are a Poisson process
//! (exponential gaps, seeded RNG) whose rate is hashrate / difficulty, where
//! hashrate is counted in difficulty-1 shares per second.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tbg_work::{Vardiff, VardiffConfig};

const TARGET_SECS: f64 = 10.0;
const POLL_EVERY_SECS: f64 = 5.0;

fn config() -> VardiffConfig {
    VardiffConfig {
        min_difficulty: 1e-5,
        max_difficulty: 1e9,
        start_difficulty: 1.0,
        target_interval_secs: TARGET_SECS,
        ..VardiffConfig::default()
    }
}

struct Run {
    vardiff: Vardiff,
    /// (time, difficulty at that time) for each share.
    shares: Vec<(f64, f64)>,
    /// Times at which the difficulty changed.
    changes: Vec<(f64, f64)>,
}

fn simulate(hashrate: f64, seed: u64, config: VardiffConfig, duration_secs: f64) -> Run {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut gap = |rate: f64| -> f64 {
        let u: f64 = rng.gen();
        -(1.0 - u).ln() / rate
    };
    let mut vardiff = Vardiff::new(config, 0.0);
    let mut shares = Vec::new();
    let mut changes = Vec::new();
    let mut next_share = gap(hashrate / vardiff.difficulty());
    let mut next_poll = POLL_EVERY_SECS;
    loop {
        let (now, changed) = if next_share <= next_poll {
            let now = next_share;
            shares.push((now, vardiff.difficulty()));
            (now, vardiff.on_share(now))
        } else {
            let now = next_poll;
            next_poll += POLL_EVERY_SECS;
            (now, vardiff.poll(now))
        };
        if now > duration_secs {
            break;
        }
        if let Some(diff) = changed {
            assert_eq!(diff, vardiff.difficulty());
            changes.push((now, diff));
        }
        // Poisson arrivals are memoryless, so redrawing after a change is exact.
        if changed.is_some() || next_share <= now {
            next_share = now + gap(hashrate / vardiff.difficulty());
        }
    }
    Run {
        vardiff,
        shares,
        changes,
    }
}

#[test]
fn converges_to_the_target_interval_across_ten_orders_of_magnitude() {
    let duration = 4.0 * 3600.0;
    let settled_from = 3600.0;
    for (index, hashrate) in [1e-4, 1e-2, 1.0, 1e2, 1e4, 1e6].into_iter().enumerate() {
        for seed in 0..3u64 {
            let run = simulate(hashrate, 1000 * index as u64 + seed, config(), duration);
            let settled: Vec<_> = run
                .shares
                .iter()
                .filter(|(t, _)| *t >= settled_from)
                .collect();
            let mean_interval = (duration - settled_from) / settled.len() as f64;
            let ideal = hashrate * TARGET_SECS;
            let final_ratio = run.vardiff.difficulty() / ideal;
            let mean_ratio =
                settled.iter().map(|(_, d)| d / ideal).sum::<f64>() / settled.len() as f64;
            let settled_changes = run
                .changes
                .iter()
                .filter(|(t, _)| *t >= settled_from)
                .count();
            let hours = (duration - settled_from) / 3600.0;
            assert!(
                (0.9 * TARGET_SECS..=1.1 * TARGET_SECS).contains(&mean_interval),
                "hashrate {hashrate} seed {seed}: mean interval {mean_interval:.2}s"
            );
            assert!(
                (0.85..=1.15).contains(&mean_ratio),
                "hashrate {hashrate} seed {seed}: mean difficulty / ideal {mean_ratio:.3}"
            );
            assert!(
                (0.6..=1.6).contains(&final_ratio),
                "hashrate {hashrate} seed {seed}: final difficulty / ideal {final_ratio:.3}"
            );
            // Steady: a handful of small corrections an hour, not constant churn.
            assert!(
                (settled_changes as f64) / hours <= 20.0,
                "hashrate {hashrate} seed {seed}: {settled_changes} changes in {hours} h"
            );
        }
    }
}

#[test]
fn large_miner_ramps_up_fast() {
    // 1e6 diff-1 shares per second from difficulty 1: a burst triggers x64
    // steps well before the first window ends.
    let run = simulate(1e6, 42, config(), 120.0);
    let first_near = run
        .changes
        .iter()
        .find(|(_, d)| *d >= 1e6)
        .expect("reaches a tenth of the ideal difficulty");
    assert!(first_near.0 < 10.0, "took {}s", first_near.0);
    assert!(
        run.changes
            .windows(2)
            .all(|w| w[1].1 / w[0].1 <= 64.0 + 1e-9),
        "step above x64"
    );
}

#[test]
fn slow_miner_comes_down_when_shares_stop_arriving() {
    // 1e-4 diff-1 shares per second at difficulty 1: one share per ~3 hours.
    let run = simulate(1e-4, 7, config(), 1800.0);
    assert!(
        run.vardiff.difficulty() < 1e-2,
        "after 30 minutes difficulty is {}",
        run.vardiff.difficulty()
    );
}

#[test]
fn clamps_to_min_and_max() {
    let narrow = VardiffConfig {
        min_difficulty: 1.0,
        max_difficulty: 1000.0,
        start_difficulty: 10.0,
        ..config()
    };
    let fast = simulate(1e6, 1, narrow, 600.0);
    assert_eq!(fast.vardiff.difficulty(), 1000.0);
    assert!(fast.changes.iter().all(|(_, d)| *d <= 1000.0));
    let slow = simulate(1e-3, 2, narrow, 3600.0);
    assert_eq!(slow.vardiff.difficulty(), 1.0);
    assert!(slow.changes.iter().all(|(_, d)| *d >= 1.0));
    // Start difficulty outside the limits is clamped too.
    let high_start = VardiffConfig {
        start_difficulty: 1e6,
        ..narrow
    };
    assert_eq!(Vardiff::new(high_start, 0.0).difficulty(), 1000.0);
}

#[test]
fn suggested_difficulty_is_a_floor_but_never_below_pool_minimum() {
    let mut vardiff = Vardiff::new(config(), 0.0);
    assert_eq!(vardiff.suggest_difficulty(500.0, 0.0), Some(500.0));
    assert_eq!(vardiff.difficulty(), 500.0);
    // No shares for an hour: the floor holds.
    let mut now = 0.0;
    while now < 3600.0 {
        now += POLL_EVERY_SECS;
        if let Some(diff) = vardiff.poll(now) {
            panic!("dropped to {diff} below the suggested floor");
        }
    }
    assert_eq!(vardiff.difficulty(), 500.0);

    let pool = VardiffConfig {
        min_difficulty: 8.0,
        start_difficulty: 8.0,
        ..config()
    };
    let mut vardiff = Vardiff::new(pool, 0.0);
    assert_eq!(
        vardiff.suggest_difficulty(0.5, 0.0),
        None,
        "below pool minimum: stays at 8"
    );
    assert_eq!(vardiff.difficulty(), 8.0);
    for bad in [f64::NAN, f64::INFINITY, -1.0, 0.0] {
        assert_eq!(vardiff.suggest_difficulty(bad, 0.0), None);
        assert_eq!(vardiff.difficulty(), 8.0);
    }
}

#[test]
fn steady_miner_at_the_right_difficulty_is_left_alone_in_the_band() {
    // Shares exactly every 10 s at the ideal difficulty: never retarget.
    let mut vardiff = Vardiff::new(
        VardiffConfig {
            start_difficulty: 100.0,
            ..config()
        },
        0.0,
    );
    for i in 1..=2000 {
        let now = f64::from(i) * TARGET_SECS;
        assert_eq!(vardiff.on_share(now), None, "share {i}");
        assert_eq!(vardiff.poll(now + 1.0), None);
    }
    // Shares 15% too fast stay inside the 0.8-1.2 band as well.
    let mut vardiff = Vardiff::new(
        VardiffConfig {
            start_difficulty: 100.0,
            ..config()
        },
        0.0,
    );
    for i in 1..=2000 {
        assert_eq!(vardiff.on_share(f64::from(i) * TARGET_SECS * 0.85), None);
    }
    // 2x too fast (outside the band): raised, dampened to halfway at first.
    let mut vardiff = Vardiff::new(
        VardiffConfig {
            start_difficulty: 100.0,
            ..config()
        },
        0.0,
    );
    let first = (1..=100)
        .find_map(|i| vardiff.on_share(f64::from(i) * 5.0))
        .unwrap();
    assert!((first - 150.0).abs() < 1e-6, "{first}");
}
