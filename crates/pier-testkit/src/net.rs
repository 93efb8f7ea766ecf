//! Loopback ports for tests that run in parallel beside a running `pier dev`.

use std::net::{SocketAddr, TcpListener};

/// A currently free TCP port on 127.0.0.1. The listener is dropped before the
/// port is returned, so a small race with other processes remains; tests that
/// can bind port 0 themselves should do that instead.
pub fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0 for a free port");
    listener
        .local_addr()
        .expect("local addr of a bound listener")
        .port()
}

pub fn free_addr() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], free_port()))
}
