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

fn limited(interval_secs: f64) -> VardiffConfig {
    VardiffConfig {
        min_change_interval_secs: interval_secs,
        ..config()
    }
}

#[test]
fn a_flood_of_suggestions_changes_the_difficulty_once_per_interval() {
    let mut vardiff = Vardiff::new(limited(5.0), 0.0);
    let mut changes = Vec::new();
    // 1000 suggestions a second for a minute, alternating far apart.
    for i in 0..60_000u32 {
        let now = f64::from(i) / 1000.0;
        let suggestion = if i % 2 == 0 { 1e9 } else { 2.0 };
        if let Some(new) = vardiff.suggest_difficulty(suggestion, now) {
            changes.push((now, new));
        }
    }
    assert!(
        changes.len() <= 13,
        "{} changes: {changes:?}",
        changes.len()
    );
    assert!(
        changes.windows(2).all(|w| w[1].0 - w[0].0 >= 5.0),
        "{changes:?}"
    );
    // The last word waits for the interval, then the next poll applies it.
    let _ = vardiff.poll(70.0);
    assert_eq!(vardiff.pending_difficulty(), None);
    assert_eq!(vardiff.difficulty(), 2.0);
    assert_eq!(
        vardiff.earned_difficulty(),
        None,
        "a suggestion is never earned"
    );
}

#[test]
fn only_a_difficulty_set_by_the_share_rate_is_earned() {
    let mut vardiff = Vardiff::new(config(), 0.0);
    assert_eq!(vardiff.earned_difficulty(), None, "the start is not earned");
    // Idle: dropped, not earned (anyone can send no shares).
    let dropped = vardiff.poll(120.0).expect("idle drop");
    assert!(dropped < 1.0);
    assert_eq!(vardiff.earned_difficulty(), None);
    // A burst of shares raises it: earned.
    let raised = (1..=16)
        .find_map(|i| vardiff.on_share(120.0 + f64::from(i) * 0.01))
        .expect("burst retarget");
    assert_eq!(vardiff.earned_difficulty(), Some(raised));
    // A suggestion changes the difficulty but not what was earned.
    assert_eq!(vardiff.suggest_difficulty(1e6, 130.0), Some(1e6));
    assert_eq!(vardiff.earned_difficulty(), Some(raised));
    // Slow shares want it lower, the suggested floor holds it: not earned.
    let mut now = 130.0;
    for _ in 0..10 {
        now += 30.0;
        assert_eq!(vardiff.on_share(now), None);
    }
    assert_eq!(vardiff.difficulty(), 1e6);
    assert_eq!(vardiff.earned_difficulty(), Some(raised));
    // Resumed from memory: earned from the start.
    let resumed = Vardiff::resume(config(), 64.0, 0.0);
    assert_eq!(resumed.difficulty(), 64.0);
    assert_eq!(resumed.earned_difficulty(), Some(64.0));
}

#[test]
fn the_network_difficulty_caps_everything_and_lowering_to_it_is_immediate() {
    let mut vardiff = Vardiff::new(limited(5.0), 0.0);
    assert_eq!(
        vardiff.suggest_difficulty(1e308, 0.0),
        Some(1e9),
        "pool max"
    );
    // Within the interval, yet a network cap applies at once.
    assert_eq!(vardiff.set_network_difficulty(5e4, 1.0), Some(5e4));
    assert_eq!(
        vardiff.suggest_difficulty(1e7, 10.0),
        None,
        "already at the cap"
    );
    assert_eq!(vardiff.difficulty(), 5e4);
    // Bursts cannot pass it either.
    assert!((1..=64).all(|i| vardiff.on_share(20.0 + f64::from(i) * 1e-3).is_none()));
    // The cap rises again: the suggested floor (1e7) comes back.
    assert_eq!(vardiff.set_network_difficulty(1e8, 30.0), Some(1e7));
    // A network difficulty under the pool minimum (regtest) caps nothing.
    assert_eq!(vardiff.set_network_difficulty(4.66e-10, 40.0), None);
    assert_eq!(vardiff.suggest_difficulty(1e308, 50.0), Some(1e9));
    // The hard ceiling holds whatever the config says.
    let unbounded = VardiffConfig {
        max_difficulty: f64::MAX,
        ..config()
    };
    let mut vardiff = Vardiff::new(unbounded, 0.0);
    assert_eq!(
        vardiff.suggest_difficulty(1e308, 0.0),
        Some(tbg_work::MAX_DIFFICULTY)
    );
}

#[test]
fn a_rate_limited_ramp_does_not_overshoot() {
    // 1e4 diff-1 shares per second (ideal difficulty 1e5) with one change
    // per 5 s: bursts while a change waits must not compound it.
    let run = simulate(1e4, 3, limited(5.0), 300.0);
    let peak = run.changes.iter().map(|(_, d)| *d).fold(0.0, f64::max);
    assert!(peak <= 1e5 * 4.0, "peak {peak}: {:?}", run.changes);
    assert!(
        run.changes
            .windows(2)
            .all(|w| w[1].0 - w[0].0 >= 5.0 - 1e-9),
        "{:?}",
        run.changes
    );
    let final_ratio = run.vardiff.difficulty() / 1e5;
    assert!((0.3..=3.0).contains(&final_ratio), "{final_ratio}");
}

#[test]
fn setup_changes_do_not_count_against_the_interval() {
    let mut vardiff = Vardiff::new(limited(5.0), 0.0);
    assert_eq!(vardiff.suggest_difficulty(100.0, 0.0), Some(100.0));
    assert_eq!(vardiff.suggest_difficulty(200.0, 0.0), None, "waits");
    vardiff.settle();
    assert_eq!(vardiff.difficulty(), 200.0);
    assert_eq!(
        vardiff.suggest_difficulty(300.0, 0.1),
        Some(300.0),
        "first real change at once"
    );
}
