//! The health state machine: retries, start period, transitions only on change, TTL expiry,
//! deregister-after.

use pier_core::deployment::TaskHealth;
use pier_core::health::{
    needs_write, next_deadline_ms, next_run_at_ms, observe, task_health, tick, CheckResult,
    CheckSettings, CheckState, HealthEvent, HealthStatus, Transition,
};
use proptest::prelude::*;

fn run(
    settings: &CheckSettings,
    state: &mut CheckState,
    result: CheckResult,
    now_ms: u64,
) -> Option<Transition> {
    let (next, t) = observe(settings, state, result, now_ms);
    *state = next;
    t
}

fn warn(output: &str) -> CheckResult {
    CheckResult::Warning {
        output: output.into(),
    }
}

#[test]
fn retries_before_critical_and_transitions_only_on_change() {
    let s = CheckSettings::default(); // 3 retries, 1 success
    let mut st = CheckState::new(0);
    let t = run(&s, &mut st, CheckResult::passing(), 1_000).unwrap();
    assert_eq!(
        (t.from, t.to),
        (HealthStatus::Unknown, HealthStatus::Passing)
    );
    assert_eq!(run(&s, &mut st, CheckResult::passing(), 31_000), None);
    assert_eq!(run(&s, &mut st, CheckResult::critical("503"), 61_000), None);
    assert_eq!(run(&s, &mut st, CheckResult::critical("503"), 91_000), None);
    assert_eq!(st.status, HealthStatus::Passing);
    assert_eq!(st.consecutive_failures, 2);
    let t = run(&s, &mut st, CheckResult::critical("HTTP 503"), 121_000).unwrap();
    assert_eq!(
        t,
        Transition {
            from: HealthStatus::Passing,
            to: HealthStatus::Critical,
            output: "HTTP 503".into(),
            at_ms: 121_000
        }
    );
    assert_eq!(
        run(&s, &mut st, CheckResult::critical("still"), 151_000),
        None
    );
    // A single success interrupts the failure streak; one is enough to pass again.
    let t = run(&s, &mut st, CheckResult::passing(), 181_000).unwrap();
    assert_eq!(t.to, HealthStatus::Passing);
    assert_eq!(st.healthy_since_ms, Some(181_000));
    // Interleaved failure/success never reaches three in a row.
    for i in 0..10 {
        let r = if i % 3 == 2 {
            CheckResult::passing()
        } else {
            CheckResult::critical("x")
        };
        assert_eq!(run(&s, &mut st, r, 200_000 + i * 1_000), None);
    }
}

#[test]
fn successes_before_passing() {
    let s = CheckSettings {
        successes_before_passing: 2,
        failures_before_critical: 1,
        ..Default::default()
    };
    let mut st = CheckState::new(0);
    assert_eq!(run(&s, &mut st, CheckResult::passing(), 10), None);
    assert_eq!(st.status, HealthStatus::Unknown);
    assert!(run(&s, &mut st, CheckResult::passing(), 20).is_some());
    assert_eq!(st.status, HealthStatus::Passing);
    assert!(run(&s, &mut st, CheckResult::critical("x"), 30).is_some());
    assert_eq!(run(&s, &mut st, CheckResult::passing(), 40), None);
    assert_eq!(run(&s, &mut st, CheckResult::critical("x"), 50), None);
    assert_eq!(run(&s, &mut st, CheckResult::passing(), 60), None);
    assert_eq!(
        run(&s, &mut st, CheckResult::passing(), 70).map(|t| t.to),
        Some(HealthStatus::Passing)
    );
}

#[test]
fn start_period_ignores_failures_until_first_pass() {
    let s = CheckSettings {
        failures_before_critical: 1,
        start_period_ms: 60_000,
        ..Default::default()
    };
    let mut st = CheckState::new(1_000);
    for t in [2_000, 10_000, 40_000, 60_999] {
        assert_eq!(run(&s, &mut st, CheckResult::critical("booting"), t), None);
        assert_eq!(st.status, HealthStatus::Unknown);
        assert_eq!(st.consecutive_failures, 0);
    }
    // The start period is over at registration + 60 s.
    let t = run(&s, &mut st, CheckResult::critical("down"), 61_000).unwrap();
    assert_eq!(t.to, HealthStatus::Critical);

    // Passing inside the start period ends it early: the next failure counts.
    let mut st = CheckState::new(0);
    assert!(run(&s, &mut st, CheckResult::passing(), 5_000).is_some());
    let t = run(&s, &mut st, CheckResult::critical("crashed"), 6_000).unwrap();
    assert_eq!(
        (t.from, t.to),
        (HealthStatus::Passing, HealthStatus::Critical)
    );
}

#[test]
fn warning_is_visible_at_once_and_stays_healthy() {
    let s = CheckSettings::default();
    let mut st = CheckState::new(0);
    run(&s, &mut st, CheckResult::passing(), 100);
    let t = run(&s, &mut st, warn("disk 91%"), 200).unwrap();
    assert_eq!(
        (t.from, t.to),
        (HealthStatus::Passing, HealthStatus::Warning)
    );
    assert_eq!(t.output, "disk 91%");
    assert_eq!(run(&s, &mut st, warn("disk 92%"), 300), None);
    // Passing → warning does not break the healthy period.
    assert_eq!(st.healthy_since_ms, Some(100));
    assert_eq!(st.status.task_health(), TaskHealth::Passing);
}

#[test]
fn ttl_check_expires_to_critical_and_recovers() {
    let s = CheckSettings {
        ttl_ms: Some(30_000),
        failures_before_critical: 3,
        ..Default::default()
    };
    let mut st = CheckState::new(0);
    assert_eq!(next_deadline_ms(&s, &st), Some(30_001));
    let (next, events) = tick(&s, &st, 30_000);
    assert!(events.is_empty());
    st = next;
    // An update pushes the expiry out.
    run(&s, &mut st, CheckResult::passing(), 20_000);
    assert!(tick(&s, &st, 49_000).1.is_empty());
    let (next, events) = tick(&s, &st, 50_001);
    assert_eq!(
        events,
        vec![HealthEvent::Transition(Transition {
            from: HealthStatus::Passing,
            to: HealthStatus::Critical,
            output: "TTL expired: no update for 30000 ms".into(),
            at_ms: 50_000
        })]
    );
    st = next;
    // No retries for silence; and expiry is reported once.
    assert_eq!(st.status, HealthStatus::Critical);
    assert!(tick(&s, &st, 90_000).1.is_empty());
    assert_eq!(next_deadline_ms(&s, &st), None);
    let t = run(&s, &mut st, CheckResult::passing(), 95_000).unwrap();
    assert_eq!(t.to, HealthStatus::Passing);
}

#[test]
fn ttl_waits_for_the_start_period_before_the_first_update() {
    let s = CheckSettings {
        ttl_ms: Some(10_000),
        start_period_ms: 30_000,
        ..Default::default()
    };
    let st = CheckState::new(0);
    assert!(tick(&s, &st, 39_999).1.is_empty());
    assert_eq!(tick(&s, &st, 40_001).1.len(), 1);
}

#[test]
fn deregister_after_critical_for_long_enough_once_per_period() {
    let s = CheckSettings {
        failures_before_critical: 1,
        deregister_critical_after_ms: Some(60_000),
        ..Default::default()
    };
    let mut st = CheckState::new(0);
    run(&s, &mut st, CheckResult::critical("x"), 1_000);
    assert_eq!(st.status, HealthStatus::Critical);
    assert_eq!(next_deadline_ms(&s, &st), Some(61_000));
    let (next, events) = tick(&s, &st, 60_999);
    assert!(events.is_empty());
    st = next;
    let (next, events) = tick(&s, &st, 61_000);
    assert_eq!(
        events,
        vec![HealthEvent::Deregister {
            critical_since_ms: 1_000
        }]
    );
    st = next;
    assert!(tick(&s, &st, 200_000).1.is_empty(), "reported once");
    // Recovery and a new critical period: reported again, measured from the new start.
    run(&s, &mut st, CheckResult::passing(), 210_000);
    run(&s, &mut st, CheckResult::critical("y"), 220_000);
    assert!(tick(&s, &st, 279_999).1.is_empty());
    assert_eq!(tick(&s, &st, 280_000).1.len(), 1);
    // Further critical results do not move the start of the critical period.
    run(&s, &mut st, CheckResult::critical("z"), 230_000);
    assert_eq!(st.status_since_ms, 220_000);
}

#[test]
fn consul_checks_decide_on_one_result_from_the_stored_status() {
    let s = CheckSettings::consul(10_000, 5_000, None, None);
    // A Consul check is registered critical unless the registration says otherwise.
    let mut st = CheckState::resumed(HealthStatus::Critical, "", 0);
    let t = run(&s, &mut st, CheckResult::passing(), 1_000).unwrap();
    assert_eq!(
        (t.from, t.to),
        (HealthStatus::Critical, HealthStatus::Passing)
    );
    let t = run(&s, &mut st, warn("429"), 2_000).unwrap();
    assert_eq!(t.to, HealthStatus::Warning);
    let t = run(&s, &mut st, CheckResult::critical("503"), 3_000).unwrap();
    assert_eq!(
        (t.from, t.to, t.output.as_str()),
        (HealthStatus::Warning, HealthStatus::Critical, "503")
    );
    assert_eq!(run(&s, &mut st, CheckResult::critical("503"), 4_000), None);
    assert_eq!(st.status_since_ms, 3_000);
    let t = run(&s, &mut st, CheckResult::passing(), 5_000).unwrap();
    assert_eq!(t.to, HealthStatus::Passing);
}

#[test]
fn a_resumed_check_starts_its_timers_afresh() {
    // TTL: the next update is due one TTL after the runner took over, whatever the status.
    let s = CheckSettings::consul(0, 0, Some(1_000), Some(5_000));
    let st = CheckState::resumed(HealthStatus::Passing, "ok", 10_000);
    assert_eq!(st.healthy_since_ms, Some(10_000));
    assert_eq!(next_deadline_ms(&s, &st), Some(11_001));
    assert!(tick(&s, &st, 11_000).1.is_empty());
    let (st, events) = tick(&s, &st, 11_001);
    assert!(
        matches!(&events[..], [HealthEvent::Transition(t)] if t.to == HealthStatus::Critical),
        "{events:?}"
    );
    // ... and the critical period counts from the expiry.
    assert_eq!(next_deadline_ms(&s, &st), Some(16_000));
    assert_eq!(
        tick(&s, &st, 16_000).1,
        vec![HealthEvent::Deregister {
            critical_since_ms: 11_000
        }]
    );

    // A check stored critical: its critical period counts from the takeover, once.
    let s = CheckSettings::consul(1_000, 1_000, None, Some(5_000));
    let st = CheckState::resumed(HealthStatus::Critical, "refused", 100);
    assert_eq!(st.critical_since_ms(), Some(100));
    assert!(tick(&s, &st, 5_099).1.is_empty());
    let (st, events) = tick(&s, &st, 5_100);
    assert_eq!(events.len(), 1);
    assert!(tick(&s, &st, 50_000).1.is_empty(), "reported once");
}

#[test]
fn writes_follow_the_status_and_for_ttl_checks_the_note() {
    let probe = CheckSettings::consul(1_000, 1_000, None, None);
    let ttl = CheckSettings::consul(0, 0, Some(10_000), None);
    for s in [&probe, &ttl] {
        let mut st = CheckState::resumed(HealthStatus::Critical, "", 0);
        assert!(!needs_write(s, &st, HealthStatus::Critical, ""));
        run(s, &mut st, CheckResult::passing(), 1_000);
        assert!(needs_write(s, &st, HealthStatus::Critical, ""));
        // Until the write lands, it stays due (a failed write is retried).
        assert!(needs_write(s, &st, HealthStatus::Critical, ""));
        assert!(!needs_write(s, &st, HealthStatus::Passing, ""));
        // A new output with the same status: the application's note (TTL `update`) is
        // written, a probe's changing output is not.
        run(
            s,
            &mut st,
            CheckResult::Passing {
                output: "42 jobs queued".into(),
            },
            2_000,
        );
        assert_eq!(
            needs_write(s, &st, HealthStatus::Passing, ""),
            s.ttl_ms.is_some()
        );
        assert!(!needs_write(
            s,
            &st,
            HealthStatus::Passing,
            "42 jobs queued"
        ));
    }
}

#[test]
fn next_run_follows_the_interval() {
    let s = CheckSettings::default();
    let mut st = CheckState::new(500);
    assert_eq!(next_run_at_ms(&s, &st), 500);
    run(&s, &mut st, CheckResult::timed_out(5_000), 5_500);
    assert_eq!(st.output, "timed out after 5000 ms");
    assert_eq!(next_run_at_ms(&s, &st), 35_500);
}

#[test]
fn task_health_aggregates_checks() {
    let s = CheckSettings {
        failures_before_critical: 1,
        ..Default::default()
    };
    let mut a = CheckState::new(0);
    let mut b = CheckState::new(0);
    assert_eq!(task_health(&[], 7), (TaskHealth::Passing, Some(7)));
    assert_eq!(task_health(&[&a, &b], 0), (TaskHealth::Unknown, None));
    run(&s, &mut a, CheckResult::passing(), 100);
    assert_eq!(task_health(&[&a, &b], 0), (TaskHealth::Unknown, None));
    run(&s, &mut b, warn("slow"), 300);
    assert_eq!(task_health(&[&a, &b], 0), (TaskHealth::Passing, Some(300)));
    run(&s, &mut a, CheckResult::critical("x"), 400);
    assert_eq!(task_health(&[&a, &b], 0), (TaskHealth::Critical, None));
}

fn arb_result() -> impl Strategy<Value = CheckResult> {
    prop_oneof![
        4 => Just(CheckResult::passing()),
        1 => Just(warn("w")),
        4 => Just(CheckResult::critical("c")),
    ]
}

proptest! {
    /// Over any sequence of results and ticks: a transition is reported exactly when the
    /// status changes, with the right endpoints; critical is only reached after
    /// `failures_before_critical` consecutive failures (or a TTL expiry); deregister is
    /// reported at most once per critical period.
    #[test]
    fn transitions_exactly_on_change(
        retries in 1u32..5,
        successes in 1u32..4,
        start_period in prop_oneof![Just(0u64), Just(5_000)],
        ttl in prop_oneof![Just(None), Just(Some(4_000u64))],
        deregister in prop_oneof![Just(None), Just(Some(3_000u64))],
        events in proptest::collection::vec((any::<bool>(), arb_result(), 1u64..3_000), 0..60),
    ) {
        let s = CheckSettings {
            failures_before_critical: retries,
            successes_before_passing: successes,
            start_period_ms: start_period,
            ttl_ms: ttl,
            deregister_critical_after_ms: deregister,
            ..Default::default()
        };
        let mut st = CheckState::new(0);
        let mut now = 0;
        let mut deregistered_this_period = false;
        let mut streak = 0u32;
        for (is_tick, result, dt) in events {
            now += dt;
            let before = st.status;
            if is_tick {
                let (next, evs) = tick(&s, &st, now);
                let transitions: Vec<&Transition> = evs.iter().filter_map(|e| match e {
                    HealthEvent::Transition(t) => Some(t),
                    _ => None,
                }).collect();
                prop_assert_eq!(transitions.len(), usize::from(next.status != before));
                for t in transitions {
                    prop_assert_eq!((t.from, t.to), (before, next.status));
                    prop_assert_eq!(t.to, HealthStatus::Critical);
                    deregistered_this_period = false;
                }
                let deregs = evs.iter().filter(|e| matches!(e, HealthEvent::Deregister { .. })).count();
                if deregs > 0 {
                    prop_assert!(!deregistered_this_period);
                    prop_assert_eq!(next.status, HealthStatus::Critical);
                    deregistered_this_period = true;
                }
                st = next;
            } else {
                let was_critical_result = matches!(result, CheckResult::Critical { .. });
                let in_start = st.in_start_period(&s, now);
                let (next, t) = observe(&s, &st, result, now);
                prop_assert_eq!(t.is_some(), next.status != before);
                if let Some(t) = &t {
                    prop_assert_eq!((t.from, t.to), (before, next.status));
                    prop_assert_eq!(t.at_ms, now);
                    deregistered_this_period = false;
                }
                if was_critical_result && !in_start { streak += 1 } else if !was_critical_result { streak = 0 }
                if next.status == HealthStatus::Critical && before != HealthStatus::Critical {
                    prop_assert!(streak >= retries, "critical after {} failures", streak);
                }
                st = next;
            }
        }
    }
}
