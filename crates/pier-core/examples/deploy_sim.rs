//! Rolling-deploy simulation at cluster scale: the deployment controller, the scheduler and the
//! test simulator (which checks the healthy floor, the surge cap and the stop ordering after
//! every step). See bench/scheduler/README.md.
//!
//! `cargo run --release -p pier-core --example deploy_sim -- [--nodes N] [--desired D]
//!  [--surge S] [--unavailable U] [--scenario good|crash]`

#[path = "../tests/sim/mod.rs"]
mod sim;

use std::time::{Duration, Instant};

use pier_core::deployment::{step, Deployment, DeploymentKind, DeploymentSettings};
use sim::{Behavior, Sim};

struct Args {
    nodes: usize,
    desired: u32,
    surge: Option<u32>,
    unavailable: Option<u32>,
    crash: bool,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        nodes: 5_000,
        desired: 15_000,
        surge: None,
        unavailable: None,
        crash: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().ok_or_else(|| format!("{flag} needs a value"))?;
        let bad = |e: std::num::ParseIntError| format!("{flag} {value}: {e}");
        match flag.as_str() {
            "--nodes" => args.nodes = value.parse().map_err(bad)?,
            "--desired" => args.desired = value.parse().map_err(bad)?,
            "--surge" => args.surge = Some(value.parse().map_err(bad)?),
            "--unavailable" => args.unavailable = Some(value.parse().map_err(bad)?),
            "--scenario" => match value.as_str() {
                "good" => args.crash = false,
                "crash" => args.crash = true,
                other => return Err(format!("unknown scenario {other} (good|crash)")),
            },
            _ => return Err(format!("unknown flag {flag}")),
        }
    }
    Ok(args)
}

fn main() {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("deploy_sim: {e}");
            std::process::exit(2);
        }
    };
    // Like Kubernetes' defaults: 25% surge, 25% unavailable, here 25% / 10%.
    let surge = args.surge.unwrap_or(args.desired.div_ceil(4));
    let unavailable = args.unavailable.unwrap_or(args.desired / 10);
    let settings = DeploymentSettings {
        max_surge: surge,
        max_unavailable: unavailable,
        min_healthy_time_ms: 10_000,
        healthy_deadline_ms: 300_000,
        failure_threshold: None,
        auto_rollback: true,
        drain_delay_ms: 5_000,
    };
    let mut sim = Sim::new(args.nodes, 3, 1, args.desired);
    let mut behavior = Behavior::good(2_000, 3_000);
    if args.crash {
        behavior.crash_after_healthy_ms = Some(5_000);
    }
    sim.behaviors.insert(2, behavior);
    sim.begin(Deployment {
        id: "sim".into(),
        target_revision: 2,
        previous_stable_revision: Some(1),
        desired_count: args.desired,
        settings: settings.clone(),
        kind: DeploymentKind::Update,
    });
    println!(
        "{} nodes, 3 zones, {} tasks of revision 1 → 2, max_surge {surge}, max_unavailable \
         {unavailable} (floor {}), min_healthy_time 10s, drain 5s, tick 1s, scenario {}",
        args.nodes,
        args.desired,
        args.desired - unavailable.min(args.desired),
        if args.crash {
            "crash 5s after healthy"
        } else {
            "good"
        }
    );

    let started_ms = sim.now_ms;
    let wall = Instant::now();
    let mut step_time = Duration::ZERO;
    let mut steps = 0u64;
    let status = loop {
        if steps > 100_000 {
            eprintln!("deploy_sim: no end after {steps} steps: {:?}", sim.state);
            std::process::exit(1);
        }
        let snapshot = sim.snapshot();
        let t = Instant::now();
        let plan = step(&snapshot, sim.now_ms);
        step_time += t.elapsed();
        steps += 1;
        sim.steps = steps;
        if let Err(e) = sim.apply(&plan) {
            eprintln!("deploy_sim: INVARIANT BROKEN at step {steps}: {e}");
            std::process::exit(1);
        }
        if sim.state.status.is_terminal() {
            sim.history
                .push((sim.deployment.clone(), sim.state.clone()));
            break sim.state.status;
        }
        sim.advance(1_000);
    };
    if let Err(e) = sim.check_stop_order() {
        eprintln!("deploy_sim: INVARIANT BROKEN: {e}");
        std::process::exit(1);
    }
    for (d, s) in &sim.history {
        println!(
            "deployment {} (revision {}): {:?} — {}",
            d.id,
            d.target_revision,
            s.status,
            s.reason.as_deref().unwrap_or("")
        );
    }
    println!(
        "final {status:?} after {steps} steps, {} s simulated; healthy never below {} (floor {}); \
         at most {} tasks holding resources (cap {}); {} stop sequences all deregister → drain → \
         stop; {} placement failures",
        (sim.now_ms - started_ms) / 1_000,
        sim.min_healthy_seen,
        args.desired - unavailable.min(args.desired),
        sim.max_occupying_seen,
        args.desired + surge,
        sim.log.len(),
        sim.placement_failures
    );
    println!(
        "controller time: {:.1} ms total, {:.2} ms per step ({} tasks in the snapshot at the end); \
         wall time incl. simulator and scheduler {:.1} s",
        step_time.as_secs_f64() * 1e3,
        step_time.as_secs_f64() * 1e3 / steps as f64,
        sim.task_ids().len(),
        wall.elapsed().as_secs_f64()
    );
    println!(
        "healthy by revision at the end: {:?}",
        sim.healthy_by_revision()
    );
}
