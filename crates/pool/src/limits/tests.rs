use super::*;

fn ip(text: &str) -> IpAddr {
    text.parse().unwrap()
}

fn at(start: Instant, ms: u64) -> Instant {
    start + Duration::from_millis(ms)
}

#[test]
fn a_bucket_allows_a_minutes_burst_then_its_rate() {
    let mut bucket = Bucket::full();
    for _ in 0..3 {
        assert!(bucket.take(3, 0));
    }
    assert!(!bucket.take(3, 0));
    // One token every 20 s.
    assert!(!bucket.take(3, 19_999));
    assert!(bucket.take(3, 20_000));
    assert!(!bucket.take(3, 20_001));
    // Never more than the capacity, however long the pause.
    for _ in 0..3 {
        assert!(bucket.take(3, 10_000_000));
    }
    assert!(!bucket.take(3, 10_000_000));
    // 0 = unlimited; a clock that steps back refills nothing.
    assert!((0..10_000).all(|_| bucket.take(0, 0)));
    assert!(!bucket.take(3, 5));
}

#[test]
fn ipv6_sources_are_keyed_by_their_64() {
    let a = IpKey::of(ip("2001:db8:1:2::1"));
    assert_eq!(a, IpKey::of(ip("2001:db8:1:2:ffff:ffff:ffff:ffff")));
    assert_ne!(a, IpKey::of(ip("2001:db8:1:3::1")));
    assert_eq!(a.to_string(), "2001:db8:1:2::/64");
    // IPv4, also when it arrives mapped on a dual-stack socket.
    let v4 = IpKey::of(ip("192.0.2.7"));
    assert_eq!(v4, IpKey::of(ip("::ffff:192.0.2.7")));
    assert_ne!(v4, IpKey::of(ip("192.0.2.8")));
    assert_eq!(v4.to_string(), "192.0.2.7");
    // ::1 and 0.0.0.0 are not the same source.
    assert_ne!(IpKey::of(ip("::1")), IpKey::of(ip("0.0.0.0")));
}

#[test]
fn ipv6_sources_belong_to_their_48_site() {
    let site = IpKey::site(ip("2001:db8:1:2::1")).unwrap();
    assert_eq!(site, IpKey::site(ip("2001:db8:1:ffff::9")).unwrap());
    assert_ne!(site, IpKey::site(ip("2001:db8:2::1")).unwrap());
    assert_eq!(site.to_string(), "2001:db8:1::/48");
    assert_eq!(IpKey::site(ip("192.0.2.7")), None);
    assert_eq!(IpKey::site(ip("::ffff:192.0.2.7")), None);
}

#[test]
fn a_site_is_allowed_a_few_sources_worth() {
    let start = Instant::now();
    let limits = LimitSettings {
        ban_after_refusals_per_minute: 2,
        ..LimitSettings::default()
    };
    let mut sites = IpTable::scaled(16, 4, start);
    let site = IpKey::site(ip("2001:db8:9::1")).unwrap();
    // 4 x 10 connects a minute, then refused.
    for n in 0..40 {
        assert_eq!(sites.admit(site, &limits, start), Ok(()), "connect {n}");
        sites.release(site, false, &limits, start);
    }
    assert_eq!(
        sites.admit(site, &limits, start),
        Err(LimitKind::ConnectRate)
    );
    // 4 x 50 open at once.
    let later = at(start, 3_600_000);
    let mut open = 0;
    while sites.admit(site, &limits, at(later, open * 1_500)).is_ok() {
        open += 1;
    }
    assert_eq!(sites.open(site), 200);
    // Banned after 4 x 2 abuse closures within a minute.
    let banned: Vec<bool> = (0..9)
        .map(|_| sites.release(site, true, &limits, at(later, 400_000)))
        .collect();
    assert_eq!(banned.iter().filter(|b| **b).count(), 1);
    assert!(banned[8] && !banned[7]);
}

#[test]
fn fresh_sources_cannot_push_a_ban_out_of_a_full_table() {
    let start = Instant::now();
    let limits = LimitSettings {
        ban_after_refusals_per_minute: 1,
        ..LimitSettings::default()
    };
    let mut table = IpTable::new(8, start);
    let abuser = IpKey::of(ip("198.51.100.66"));
    for _ in 0..2 {
        assert_eq!(table.admit(abuser, &limits, start), Ok(()));
        table.release(abuser, true, &limits, start);
    }
    assert!(table.is_banned(abuser, &limits, start));
    // The abuser cycles through 10,000 fresh addresses to flush the table.
    for n in 0u32..10_000 {
        let fresh = IpKey::of(IpAddr::from((0x0a00_0000 + n).to_be_bytes()));
        let now = at(start, u64::from(n));
        assert_eq!(table.admit(fresh, &limits, now), Ok(()));
        table.release(fresh, false, &limits, now);
        assert!(table.len() <= 8);
    }
    assert_eq!(
        table.admit(abuser, &limits, at(start, 10_000)),
        Err(LimitKind::Banned),
        "the ban outlived the churn"
    );
}

#[test]
fn cidrs_parse_and_match() {
    let farm: Cidr = "10.1.0.0/16".parse().unwrap();
    assert!(farm.contains(ip("10.1.255.3")));
    assert!(farm.contains(ip("::ffff:10.1.0.1")));
    assert!(!farm.contains(ip("10.2.0.1")));
    assert!(!farm.contains(ip("2001:db8::1")));
    assert_eq!(farm.to_string(), "10.1.0.0/16");
    let one: Cidr = "192.0.2.7".parse().unwrap();
    assert!(one.contains(ip("192.0.2.7")) && !one.contains(ip("192.0.2.8")));
    let v6: Cidr = "2001:db8:aa::/48".parse().unwrap();
    assert!(v6.contains(ip("2001:db8:aa:1::5")));
    assert!(!v6.contains(ip("2001:db8:ab::5")));
    assert_eq!(v6.to_string(), "2001:db8:aa::/48");
    let all: Cidr = "0.0.0.0/0".parse().unwrap();
    assert!(all.contains(ip("203.0.113.9")) && !all.contains(ip("2001:db8::1")));
    assert!("::/0".parse::<Cidr>().unwrap().contains(ip("2001:db8::1")));
    assert!(matches!(
        "10.1.2.3/16".parse::<Cidr>(),
        Err(CidrError::HostBits { network, .. }) if network == "10.1.0.0/16"
    ));
    assert!(matches!(
        "10.0.0.0/33".parse::<Cidr>(),
        Err(CidrError::Prefix { max: 32, .. })
    ));
    for bad in ["", "10.0.0", "farm", "10.0.0.0/x", "::/129", "10.0.0.0/8/8"] {
        assert!(bad.parse::<Cidr>().is_err(), "{bad:?}");
    }
}

#[test]
fn a_connection_is_refused_past_its_request_rates_then_closed() {
    let start = Instant::now();
    let limits = LimitSettings {
        protocol_errors_per_minute: 3,
        ..LimitSettings::default()
    };
    let mut conn = ConnectionLimiter::new(start);
    for _ in 0..3 {
        assert_eq!(
            conn.request(RequestKind::Subscribe, &limits, start),
            Verdict::Allow
        );
    }
    assert_eq!(
        conn.request(RequestKind::Subscribe, &limits, start),
        Verdict::Refuse(LimitKind::SubscribeRate)
    );
    // Other kinds have their own allowance.
    for _ in 0..5 {
        assert_eq!(
            conn.request(RequestKind::Authorize, &limits, start),
            Verdict::Allow
        );
    }
    assert_eq!(
        conn.request(RequestKind::Authorize, &limits, start),
        Verdict::Refuse(LimitKind::AuthorizeRate)
    );
    assert_eq!(
        conn.request(RequestKind::Submit, &limits, start),
        Verdict::Allow
    );
    // Two refusals so far; the third protocol error is the last allowed.
    assert_eq!(
        conn.request(RequestKind::Unknown, &limits, start),
        Verdict::Allow
    );
    assert_eq!(
        conn.request(RequestKind::Unknown, &limits, start),
        Verdict::Close(LimitKind::ProtocolErrors)
    );
    // A minute later the allowances are back.
    let later = at(start, 60_000);
    assert_eq!(
        conn.request(RequestKind::Subscribe, &limits, later),
        Verdict::Allow
    );
    assert_eq!(conn.protocol_error(&limits, later), Verdict::Allow);
}

#[test]
fn submits_are_limited_per_minute_and_zero_means_unlimited() {
    let start = Instant::now();
    let mut limits = LimitSettings::default();
    let mut conn = ConnectionLimiter::new(start);
    let verdicts: Vec<Verdict> = (0..1500)
        .map(|_| conn.request(RequestKind::Submit, &limits, start))
        .collect();
    assert!(verdicts[..1000].iter().all(|v| *v == Verdict::Allow));
    // Past the rate: refused (the session still judges them, for a block),
    // never a protocol error, so never a close.
    assert!(verdicts[1000..]
        .iter()
        .all(|v| *v == Verdict::Refuse(LimitKind::SubmitRate)));
    for _ in 0..limits.protocol_errors_per_minute {
        assert_eq!(conn.protocol_error(&limits, start), Verdict::Allow);
    }
    // 1000 a minute: one every 60 ms.
    assert_eq!(
        conn.request(RequestKind::Submit, &limits, at(start, 60)),
        Verdict::Allow
    );
    limits = LimitSettings::unlimited();
    let mut conn = ConnectionLimiter::new(start);
    assert!(
        (0..100_000).all(|_| conn.request(RequestKind::Submit, &limits, start) == Verdict::Allow)
    );
    assert!((0..1000).all(|_| conn.request(RequestKind::Unknown, &limits, start) == Verdict::Allow));
}

#[test]
fn request_kinds_by_method() {
    assert_eq!(RequestKind::of("mining.subscribe"), RequestKind::Subscribe);
    assert_eq!(RequestKind::of("mining.authorize"), RequestKind::Authorize);
    assert_eq!(RequestKind::of("mining.submit"), RequestKind::Submit);
    for other in [
        "mining.configure",
        "mining.suggest_difficulty",
        "mining.extranonce.subscribe",
    ] {
        assert_eq!(RequestKind::of(other), RequestKind::Other);
    }
    assert_eq!(RequestKind::of("mining.nonsense"), RequestKind::Unknown);
}

#[test]
fn a_source_gets_its_connect_rate_and_concurrency() {
    let start = Instant::now();
    let limits = LimitSettings {
        ban_after_refusals_per_minute: 0,
        max_connections_per_ip: 12,
        ..LimitSettings::default()
    };
    let mut table = IpTable::new(16, start);
    let source = IpKey::of(ip("198.51.100.1"));
    for _ in 0..10 {
        assert_eq!(table.admit(source, &limits, start), Ok(()));
    }
    assert_eq!(
        table.admit(source, &limits, start),
        Err(LimitKind::ConnectRate)
    );
    // Another source is not affected.
    let other = IpKey::of(ip("198.51.100.2"));
    assert_eq!(table.admit(other, &limits, start), Ok(()));
    // 10 a minute: one more after 6 s, two more after 12 s: 12 open.
    assert_eq!(table.admit(source, &limits, at(start, 6_000)), Ok(()));
    assert_eq!(table.admit(source, &limits, at(start, 12_000)), Ok(()));
    assert_eq!(table.open(source), 12);
    assert_eq!(
        table.admit(source, &limits, at(start, 60_000)),
        Err(LimitKind::IpConnections)
    );
    assert!(!table.release(source, false, &limits, at(start, 60_000)));
    assert_eq!(table.admit(source, &limits, at(start, 60_000)), Ok(()));
}

#[test]
fn refusals_at_admission_never_ban_a_source() {
    // A farm of 60 miners behind one address, all reconnecting at once
    // after a pool restart, again and again: refused past the connect rate
    // and the concurrency limit, never banned, and served over time.
    let start = Instant::now();
    let limits = LimitSettings {
        max_connections_per_ip: 50,
        ..LimitSettings::default()
    };
    let mut table = IpTable::new(16, start);
    let farm = IpKey::of(ip("203.0.113.5"));
    let mut admitted = 0;
    let mut refusals = 0;
    // Every miner not yet served retries every second for 10 minutes.
    for second in 0..600u64 {
        let now = at(start, second * 1000);
        let waiting = 60 - admitted;
        for _ in 0..waiting {
            match table.admit(farm, &limits, now) {
                Ok(()) => admitted += 1,
                Err(kind) => {
                    assert!(
                        matches!(kind, LimitKind::ConnectRate | LimitKind::IpConnections),
                        "{kind:?} at {second} s"
                    );
                    refusals += 1;
                }
            }
        }
        assert!(!table.is_banned(farm, &limits, now), "banned at {second} s");
    }
    // 10, then one every 6 s, up to the 50 the source may hold.
    assert_eq!(admitted, 50);
    assert!(refusals > 10_000, "{refusals}");
}

#[test]
fn a_source_whose_connections_keep_being_closed_for_abuse_is_banned_until_it_expires() {
    let start = Instant::now();
    let limits = LimitSettings::default();
    let mut table = IpTable::new(16, start);
    let source = IpKey::of(ip("203.0.113.5"));
    // The connect rate lets 10 in at once and one every 6 s after: each
    // closed for abuse. The 11th closure within the minute starts the ban.
    let mut banned_at = None;
    for n in 0..20u64 {
        let now = at(start, n.saturating_sub(9) * 6_000);
        assert_eq!(table.admit(source, &limits, now), Ok(()), "connection {n}");
        if table.release(source, true, &limits, now) {
            banned_at = Some(n);
            break;
        }
    }
    assert_eq!(banned_at, Some(10));
    let banned = at(start, 6_000);
    assert!(table.is_banned(source, &limits, banned));
    let almost = at(start, 6_000 + 299_999);
    assert_eq!(table.admit(source, &limits, almost), Err(LimitKind::Banned));
    // Served: a fresh start.
    let served = at(start, 6_000 + 300_000);
    assert!(!table.is_banned(source, &limits, served));
    assert_eq!(table.admit(source, &limits, served), Ok(()));
    // Strikes in different minutes do not add up.
    let other = IpKey::of(ip("203.0.113.6"));
    for minute in 0..5u64 {
        for n in 0..10u64 {
            let now = at(start, minute * 61_000 + n);
            assert_eq!(table.admit(other, &limits, now), Ok(()));
            assert!(!table.release(other, true, &limits, now));
        }
    }
    // Turning bans off (ban_duration 0) lifts a ban at once.
    for n in 0..11u64 {
        let now = at(start, 400_000 + n.saturating_sub(9) * 6_000);
        assert_eq!(table.admit(other, &limits, now), Ok(()));
        table.release(other, true, &limits, now);
    }
    let banned = at(start, 406_000);
    assert!(table.is_banned(other, &limits, banned));
    let off = LimitSettings {
        ban_duration: Duration::ZERO,
        ..limits.clone()
    };
    assert!(!table.is_banned(other, &off, banned));
}

#[test]
fn connections_closed_for_abuse_count_towards_a_ban() {
    let start = Instant::now();
    let limits = LimitSettings {
        ban_after_refusals_per_minute: 2,
        ..LimitSettings::default()
    };
    let mut table = IpTable::new(4, start);
    let source = IpKey::of(ip("2001:db8:5::1"));
    let results: Vec<bool> = (0..3)
        .map(|_| {
            assert_eq!(table.admit(source, &limits, start), Ok(()));
            table.release(source, true, &limits, start)
        })
        .collect();
    assert_eq!(results, [false, false, true]);
    // Any address of that /64 is banned with it.
    let neighbour = IpKey::of(ip("2001:db8:5:0:dead:beef::9"));
    assert_eq!(
        table.admit(neighbour, &limits, start),
        Err(LimitKind::Banned)
    );
}

#[test]
fn a_full_table_evicts_the_least_recently_seen_idle_source_and_never_grows() {
    let start = Instant::now();
    let limits = LimitSettings {
        connects_per_minute_per_ip: 1,
        ban_after_refusals_per_minute: 0,
        ..LimitSettings::default()
    };
    let mut table = IpTable::new(3, start);
    let key = |n: u8| IpKey::of(IpAddr::from([192, 0, 2, n]));
    // 1 stays connected; 2 and 3 connect and leave, 2 is seen again later.
    for n in 1..=3 {
        assert_eq!(table.admit(key(n), &limits, start), Ok(()));
    }
    table.release(key(2), false, &limits, start);
    table.release(key(3), false, &limits, start);
    assert_eq!(
        table.admit(key(2), &limits, at(start, 1)),
        Err(LimitKind::ConnectRate)
    );
    // 4 takes 3's slot (least recently seen idle), not 1's (connected).
    assert_eq!(table.admit(key(4), &limits, at(start, 2)), Ok(()));
    assert_eq!(table.len(), 3);
    assert_eq!(table.open(key(1)), 1);
    // 2 is still remembered (its rate still applies); 3 was forgotten.
    assert_eq!(
        table.admit(key(2), &limits, at(start, 3)),
        Err(LimitKind::ConnectRate)
    );
    // 3 comes back as a newcomer and takes 2's slot, the only idle one.
    assert_eq!(table.admit(key(3), &limits, at(start, 4)), Ok(()));
    assert_eq!(table.len(), 3);
    // Every slot is now held by a connected source (1, 3, 4): 5 is refused.
    assert_eq!(
        table.admit(key(5), &limits, at(start, 5)),
        Err(LimitKind::IpTableFull)
    );
    assert_eq!(table.len(), 3);
    // A source leaving frees its slot for the next newcomer.
    table.release(key(1), false, &limits, at(start, 7));
    assert_eq!(table.admit(key(5), &limits, at(start, 8)), Ok(()));
    assert_eq!(table.open(key(1)), 0);
}

#[test]
fn a_flood_of_distinct_sources_stays_within_the_capacity() {
    let start = Instant::now();
    let limits = LimitSettings::default();
    let mut table = IpTable::new(1000, start);
    for n in 0u32..50_000 {
        let key = IpKey::of(IpAddr::from(n.to_be_bytes()));
        assert_eq!(table.admit(key, &limits, start), Ok(()));
        table.release(key, false, &limits, start);
    }
    assert_eq!(table.len(), 1000);
    let (indexed, allocated) = table.allocated();
    assert!(indexed == 1000 && allocated <= 4096);
}

#[test]
fn the_log_budget_bounds_lines_and_counts_what_it_left_out() {
    let start = Instant::now();
    let mut budget = LogBudget::new(start);
    let written = (0..10_000)
        .filter(|_| budget.allow(start).is_some())
        .count();
    assert_eq!(written, LOG_LINES_PER_MINUTE as usize);
    assert_eq!(budget.allow(at(start, 60_000)), Some(10_000 - 30));
    assert_eq!(budget.allow(at(start, 60_000)), Some(0));
}

#[test]
fn every_kind_has_a_distinct_label_and_index() {
    let labels: std::collections::HashSet<_> = LimitKind::ALL.iter().map(|k| k.label()).collect();
    assert_eq!(labels.len(), LimitKind::ALL.len());
    for (position, kind) in LimitKind::ALL.iter().enumerate() {
        assert_eq!(kind.index(), position);
    }
}
