//! Loopback ports for tests that run in parallel beside a running `pier dev`.

use std::collections::HashSet;
use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::sync::{Mutex, OnceLock};

use rand::Rng;

/// Lowest port handed out; below it sit the well-known and `pier dev` defaults.
const LOWEST_PORT: u16 = 10_000;

/// A currently free port on 127.0.0.1, for TCP and UDP alike (DNS listens on both).
///
/// Chosen at random *below* the kernel's ephemeral range: binding port 0 returns a port from
/// that range, and the kernel hands the same range out as the local port of every outgoing
/// connection, so under a busy parallel test run another test's client connection could take
/// the port between this call and the server binding it (CI saw a `pier dev` never start that
/// way). Ports below the range are only ever taken by an explicit bind. A port is never handed
/// out twice in one process (the tests of one binary run in parallel in it and would otherwise
/// draw the same port about once in a hundred runs, CI saw that too); test binaries run one
/// after another, so the remaining race is with other programs on the machine.
pub fn free_port() -> u16 {
    static HANDED_OUT: OnceLock<Mutex<HashSet<u16>>> = OnceLock::new();
    let ephemeral_low = ephemeral_range_start();
    let mut rng = rand::rng();
    if ephemeral_low > LOWEST_PORT + 1_000 {
        let mut handed_out = HANDED_OUT
            .get_or_init(Default::default)
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        for _ in 0..1_000 {
            let port = rng.random_range(LOWEST_PORT..ephemeral_low);
            if !handed_out.contains(&port) && bindable(port) {
                handed_out.insert(port);
                return port;
            }
        }
    }
    // A kernel with an unusual ephemeral range: fall back to what it picks.
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0 for a free port");
    listener
        .local_addr()
        .expect("local addr of a bound listener")
        .port()
}

pub fn free_addr() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], free_port()))
}

fn bindable(port: u16) -> bool {
    TcpListener::bind(("127.0.0.1", port)).is_ok() && UdpSocket::bind(("127.0.0.1", port)).is_ok()
}

/// The first port of the kernel's ephemeral range (Linux default 32768).
fn ephemeral_range_start() -> u16 {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(32_768)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn free_ports_are_bindable_and_below_the_ephemeral_range() {
        for _ in 0..50 {
            let port = free_port();
            assert!(
                port >= LOWEST_PORT && port < ephemeral_range_start(),
                "{port}"
            );
            assert!(bindable(port), "{port} not bindable");
        }
    }
}
