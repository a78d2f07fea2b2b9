//! Unit tests of `pool`: selection per algorithm, exclusion, ejection, peers.

use super::*;

fn pool(
    balance: Balance,
    targets: &[(&str, usize)],
    outlier: Option<(u32, Duration)>,
) -> Arc<Pool> {
    let m = Metrics::new().unwrap();
    Arc::new(
        Pool::new(
            PoolSettings {
                name: "p".into(),
                targets: targets
                    .iter()
                    .map(|(a, w)| (a.parse().unwrap(), *w))
                    .collect(),
                balance,
                hash_key: None,
                connect_timeout: Duration::from_secs(1),
                read_timeout: Duration::from_secs(1),
                retries: 1,
                outlier,
                tls: None,
                http2: false,
                health: None,
                unhealthy_after: 3,
                definition: UpstreamConfig {
                    targets: vec![],
                    balance,
                    hash_key: None,
                    health_check: None,
                    outlier: None,
                    connect_timeout: None,
                    read_timeout: None,
                    retries: None,
                    tls: None,
                    http2: None,
                },
            },
            &m,
        )
        .unwrap(),
    )
}

#[test]
fn http2_peers() {
    use pingora_core::protocols::ALPN;
    let mut plain = PeerOptions::new();
    set_http2(&mut plain, false);
    assert_eq!(
        (plain.alpn, plain.max_h2_streams),
        (ALPN::H2, H2_MAX_STREAMS)
    );
    let mut tls = PeerOptions::new();
    set_http2(&mut tls, true);
    assert_eq!(tls.alpn, ALPN::H2H1);
}

#[test]
fn weighted_round_robin_respects_weights() {
    let p = pool(
        Balance::RoundRobin,
        &[("127.0.0.1:1", 1), ("127.0.0.1:2", 3)],
        None,
    );
    let mut counts = [0; 2];
    for _ in 0..400 {
        counts[p.select(b"", &[]).unwrap()] += 1;
    }
    assert_eq!(counts, [100, 300]);
}

/// Round robin's own turn skips a target that may not take the request (excluded,
/// ejected) through Pingora's selection, and the turns still follow the weights.
#[test]
fn round_robin_turns_skip_unusable_targets() {
    let p = pool(
        Balance::RoundRobin,
        &[("127.0.0.1:1", 1), ("127.0.0.1:2", 2), ("127.0.0.1:3", 1)],
        Some((1, Duration::from_secs(60))),
    );
    let mut counts = [0; 3];
    for _ in 0..400 {
        counts[p.select(b"", &[]).unwrap()] += 1;
    }
    assert_eq!(counts, [100, 200, 100]);
    for _ in 0..40 {
        assert_ne!(p.select(b"", &[1]), Some(1));
        assert_eq!(p.select(b"", &[0, 2]), Some(1));
    }
    assert_eq!(p.select(b"", &[0, 1, 2]), None);
    p.report(1, Some(FailureKind::Connect));
    assert!(p.target_ejected(1));
    for _ in 0..40 {
        assert!(matches!(p.select(b"", &[]), Some(0 | 2)));
    }
    assert_eq!(p.select(b"", &[0, 2]), None);
}

#[test]
fn exclusion_and_ejection() {
    let p = pool(
        Balance::Random,
        &[("127.0.0.1:1", 1), ("127.0.0.1:2", 1)],
        Some((2, Duration::from_secs(60))),
    );
    for _ in 0..20 {
        assert_eq!(p.select(b"", &[0]), Some(1));
    }
    assert_eq!(p.select(b"", &[0, 1]), None);
    p.report(1, Some(FailureKind::Connect));
    assert!(!p.target_ejected(1));
    p.report(1, Some(FailureKind::Connect));
    assert!(p.target_ejected(1));
    assert_eq!(p.select(b"", &[0]), None);
    assert!(!p.has_candidate(&[0]));
    for _ in 0..20 {
        assert_eq!(p.select(b"", &[]), Some(0));
    }
    // The last target still in is never ejected.
    for _ in 0..5 {
        p.report(0, Some(FailureKind::Connect));
    }
    assert!(!p.target_ejected(0));
}

#[test]
fn consistent_hash_is_sticky() {
    let p = pool(
        Balance::ConsistentHash,
        &[("127.0.0.1:1", 1), ("127.0.0.1:2", 1), ("127.0.0.1:3", 1)],
        None,
    );
    let a = p.select(b"user-1", &[]).unwrap();
    for _ in 0..50 {
        assert_eq!(p.select(b"user-1", &[]), Some(a));
    }
    let spread: BTreeSet<usize> = (0..100)
        .filter_map(|i| p.select(format!("user-{i}").as_bytes(), &[]))
        .collect();
    assert!(spread.len() > 1);
}

#[test]
fn least_requests_prefers_idle() {
    let p = pool(
        Balance::LeastRequests,
        &[("127.0.0.1:1", 1), ("127.0.0.1:2", 1)],
        None,
    );
    let _busy: Vec<InFlight> = (0..10).map(|_| p.begin(0)).collect();
    for _ in 0..50 {
        assert_eq!(p.select(b"", &[]), Some(1));
    }
    drop(_busy);
    assert_eq!(p.targets[0].inflight(), 0);
}
