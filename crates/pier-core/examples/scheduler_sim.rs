//! Scheduler benchmark: places many tasks on a large simulated cluster with spread + capacity
//! and reports placements per second. See bench/scheduler/README.md.
//!
//! `cargo run --release -p pier-core --example scheduler_sim -- [--nodes N] [--tasks T]
//!  [--zones Z] [--services S]`

use std::collections::BTreeMap;
use std::time::Instant;

use pier_core::placement::{
    ClusterSnapshot, Node, NodeStatus, PlacementRequest, PlacementState, Resources,
};

struct Args {
    nodes: usize,
    tasks: u32,
    zones: usize,
    services: u32,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        nodes: 5_000,
        tasks: 150_000,
        zones: 3,
        services: 3_000,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().ok_or_else(|| format!("{flag} needs a value"))?;
        let bad = |e: std::num::ParseIntError| format!("{flag} {value}: {e}");
        match flag.as_str() {
            "--nodes" => args.nodes = value.parse().map_err(bad)?,
            "--tasks" => args.tasks = value.parse().map_err(bad)?,
            "--zones" => args.zones = value.parse().map_err(bad)?,
            "--services" => args.services = value.parse().map_err(bad)?,
            _ => return Err(format!("unknown flag {flag}")),
        }
    }
    if args.zones == 0 || args.services == 0 {
        return Err("--zones and --services must be at least 1".into());
    }
    Ok(args)
}

/// Deterministic pseudo-random numbers (xorshift64*), so every run simulates the same cluster.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}

fn cluster(nodes: usize, zones: usize) -> Vec<Node> {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    (0..nodes)
        .map(|i| {
            // Mixed node sizes and some existing load, so free memory differs between nodes.
            let size = 1 + rng.next() % 4;
            let capacity = Resources::new(4_000 * size, 16_384 * size);
            let allocated = Resources::new(rng.next() % 2_000, rng.next() % 8_192);
            Node {
                id: format!("node-{i:05}"),
                zone: format!("zone-{}", i % zones),
                attributes: BTreeMap::new(),
                capacity,
                allocated,
                status: if i % 97 == 0 {
                    NodeStatus::Draining
                } else {
                    NodeStatus::Ready
                },
            }
        })
        .collect()
}

/// CPU time of this thread in ns (Linux), so a busy shared machine does not skew the figure:
/// wall time includes time spent waiting for the core.
fn thread_cpu_ns() -> Option<u64> {
    let stat = std::fs::read_to_string("/proc/thread-self/schedstat").ok()?;
    stat.split_whitespace().next()?.parse().ok()
}

fn per_cpu_second(count: usize, before: Option<u64>, after: Option<u64>) -> String {
    match (before, after) {
        (Some(b), Some(a)) if a > b => {
            let secs = (a - b) as f64 / 1e9;
            format!(
                "{:.0} placements per CPU-second ({:.1} ms CPU)",
                count as f64 / secs,
                secs * 1e3
            )
        }
        _ => "CPU time unavailable".to_owned(),
    }
}

fn check(nodes: &[Node], placed: &BTreeMap<&str, Resources>) -> Result<(), String> {
    for node in nodes {
        if let Some(used) = placed.get(node.id.as_str()) {
            let total = node.allocated.saturating_add(used);
            if !node.capacity.fits(&total) {
                return Err(format!("node {} over capacity: {total:?}", node.id));
            }
            if !node.is_eligible() {
                return Err(format!("task placed on ineligible node {}", node.id));
            }
        }
    }
    Ok(())
}

fn main() {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("scheduler_sim: {e}");
            std::process::exit(2);
        }
    };
    let nodes = cluster(args.nodes, args.zones);
    let task = Resources::new(100, 256);
    println!(
        "cluster: {} nodes in {} zones, task size {} millicpu / {} MiB",
        args.nodes, args.zones, task.cpu_millis, task.memory_mb
    );

    // Scenario 1: one service, all tasks in one request.
    let snapshot = ClusterSnapshot {
        nodes: nodes.clone(),
        existing: vec![],
    };
    let request = PlacementRequest {
        count: args.tasks,
        resources: task,
        ..Default::default()
    };
    let cpu_before = thread_cpu_ns();
    let started = Instant::now();
    let mut state = match PlacementState::for_request(&snapshot, &request) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("scheduler_sim: {e}");
            std::process::exit(1);
        }
    };
    let built = started.elapsed();
    let plan = state.place(request.count);
    let total = started.elapsed();
    let cpu_after = thread_cpu_ns();
    let mut placed: BTreeMap<&str, Resources> = BTreeMap::new();
    let mut per_zone: BTreeMap<&str, u64> = BTreeMap::new();
    let zone_of: BTreeMap<&str, &str> = nodes
        .iter()
        .map(|n| (n.id.as_str(), n.zone.as_str()))
        .collect();
    for p in &plan.placements {
        let e = placed.entry(p.node.as_str()).or_default();
        *e = e.saturating_add(&task);
        *per_zone.entry(zone_of[p.node.as_str()]).or_default() += 1;
    }
    if let Err(e) = check(&nodes, &placed) {
        eprintln!("scheduler_sim: INVARIANT BROKEN: {e}");
        std::process::exit(1);
    }
    println!(
        "one service, {} tasks in one request: {} placed, {} failed, build {:.1} ms, total {:.1} ms \
         => {:.0} placements/s; tasks per zone {:?}",
        args.tasks,
        plan.placements.len(),
        plan.failures.len(),
        built.as_secs_f64() * 1e3,
        total.as_secs_f64() * 1e3,
        plan.placements.len() as f64 / total.as_secs_f64(),
        per_zone
    );
    println!(
        "  {}",
        per_cpu_second(plan.placements.len(), cpu_before, cpu_after)
    );
    if let Some(f) = plan.failures.first() {
        println!("  first failure: {}", f.reason);
    }

    // Scenario 2: the same number of tasks spread over many services, each its own request
    // against the cluster as the previous services left it (state rebuilt per service).
    let mut nodes_now = nodes.clone();
    let per_service = args.tasks / args.services;
    let mut placed_total = 0usize;
    let mut failed_total = 0usize;
    let mut worst_zone_skew = 0u64;
    let mut scheduler_time = std::time::Duration::ZERO;
    let mut scheduler_cpu_ns = 0u64;
    let started = Instant::now();
    for _ in 0..args.services {
        let t = Instant::now();
        let cpu = thread_cpu_ns();
        let mut state = match PlacementState::new(&nodes_now, &[], task, Default::default(), &[]) {
            Ok(s) => s,
            Err(e) => {
                eprintln!("scheduler_sim: {e}");
                std::process::exit(1);
            }
        };
        let plan = state.place(per_service);
        scheduler_time += t.elapsed();
        if let (Some(b), Some(a)) = (cpu, thread_cpu_ns()) {
            scheduler_cpu_ns += a.saturating_sub(b);
        }
        placed_total += plan.placements.len();
        failed_total += plan.failures.len();
        let zones = state.service_tasks_per_zone();
        let max = zones.iter().map(|z| z.1).max().unwrap_or(0);
        let min = zones.iter().map(|z| z.1).min().unwrap_or(0);
        worst_zone_skew = worst_zone_skew.max(max - min);
        // The harness plays the IO loop: record the new allocations for the next service.
        // Nodes are generated in id order, so a binary search finds them.
        for p in &plan.placements {
            if let Ok(i) = nodes_now.binary_search_by(|n| n.id.as_str().cmp(&p.node)) {
                nodes_now[i].allocated = nodes_now[i].allocated.saturating_add(&task);
            }
        }
    }
    let elapsed = started.elapsed();
    for (n, o) in nodes_now.iter().zip(&nodes) {
        if !n.capacity.fits(&n.allocated) && o.capacity.fits(&o.allocated) {
            eprintln!(
                "scheduler_sim: INVARIANT BROKEN: node {} over capacity",
                n.id
            );
            std::process::exit(1);
        }
    }
    println!(
        "{} services x {} tasks (state rebuilt per service): {} placed, {} failed; scheduler \
         {:.1} ms => {:.0} placements/s ({:.3} ms per service); including the harness applying \
         allocations {:.1} ms => {:.0} placements/s; worst per-service zone skew {}",
        args.services,
        per_service,
        placed_total,
        failed_total,
        scheduler_time.as_secs_f64() * 1e3,
        placed_total as f64 / scheduler_time.as_secs_f64(),
        scheduler_time.as_secs_f64() * 1e3 / f64::from(args.services),
        elapsed.as_secs_f64() * 1e3,
        placed_total as f64 / elapsed.as_secs_f64(),
        worst_zone_skew
    );
    println!(
        "  scheduler: {}",
        per_cpu_second(placed_total, Some(0), Some(scheduler_cpu_ns))
    );
}
