//! The node's DNS server on the pier network's bridge address (UDP and TCP, port 53): the
//! resolver of every container on the node. Names it serves are answered from the node's
//! catalog feed (see `answer`); every other query is forwarded, bytes unchanged, to the
//! host's upstream resolvers, from pier's own network namespace (so a loopback upstream such
//! as systemd-resolved's 127.0.0.53 works although containers could not use it).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use hickory_proto::op::{Message, OpCode, ResponseCode};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::watch;

use super::answer::{answer, View};
use crate::gateway_feed::Instances;

/// How long one upstream gets to answer before the next is tried.
const UPSTREAM_TIMEOUT: Duration = Duration::from_secs(2);
/// A TCP client must send its next query within this time.
const TCP_IDLE: Duration = Duration::from_secs(10);
/// Pause after a socket error, so a persistent one does not spin.
const ERROR_PAUSE: Duration = Duration::from_millis(50);
/// A plain DNS answer over UDP without EDNS.
const UDP_PLAIN_MAX: usize = 512;

#[derive(Clone)]
pub struct Resolver {
    pub gateway_ip: Ipv4Addr,
    pub node: String,
    pub instances: watch::Receiver<Instances>,
    pub upstreams: Arc<Vec<SocketAddr>>,
}

/// The upstream resolvers in a resolv.conf text, port 53; `own` (the node DNS itself) is
/// left out so a query never loops back to us.
pub fn upstreams_from_resolv_conf(text: &str, own: IpAddr) -> Vec<SocketAddr> {
    text.lines()
        .filter_map(|line| {
            let mut words = line.split_whitespace();
            (words.next() == Some("nameserver")).then_some(())?;
            let ip: IpAddr = words.next()?.split('%').next()?.parse().ok()?;
            (ip != own).then(|| SocketAddr::new(ip, 53))
        })
        .collect()
}

/// `ip` or `ip:port` (port 53 by default).
pub fn parse_upstream(s: &str) -> Result<SocketAddr, String> {
    if let Ok(addr) = s.parse::<SocketAddr>() {
        return Ok(addr);
    }
    s.parse::<IpAddr>()
        .map(|ip| SocketAddr::new(ip, 53))
        .map_err(|_| format!("{s:?} is not an IP address or IP:PORT"))
}

impl Resolver {
    /// The answer bytes for one query (`tcp`: no size limit, TCP upstreams).
    async fn resolve(&self, query: &[u8], tcp: bool) -> Option<Vec<u8>> {
        let msg = Message::from_vec(query).ok()?;
        let local = {
            let instances = self.instances.borrow().clone();
            let view = View {
                gateway_ip: self.gateway_ip,
                node: &self.node,
                instances: &instances,
            };
            answer(&msg, &view)
        };
        match local {
            Some(resp) => {
                let bytes = resp.to_vec().ok()?;
                let limit = msg
                    .edns
                    .as_ref()
                    .map(|e| usize::from(e.max_payload()).max(UDP_PLAIN_MAX))
                    .unwrap_or(UDP_PLAIN_MAX);
                if !tcp && bytes.len() > limit {
                    let mut t = resp.truncate();
                    t.metadata.truncation = true;
                    return t.to_vec().ok();
                }
                Some(bytes)
            }
            None => match self.forward(query, tcp).await {
                Some(bytes) => Some(bytes),
                None => {
                    tracing::debug!("node DNS: no upstream answered");
                    Message::error_msg(msg.metadata.id, OpCode::Query, ResponseCode::ServFail)
                        .to_vec()
                        .ok()
                }
            },
        }
    }

    async fn forward(&self, query: &[u8], tcp: bool) -> Option<Vec<u8>> {
        for upstream in self.upstreams.iter() {
            let attempt = if tcp {
                tokio::time::timeout(UPSTREAM_TIMEOUT, forward_tcp(*upstream, query)).await
            } else {
                tokio::time::timeout(UPSTREAM_TIMEOUT, forward_udp(*upstream, query)).await
            };
            match attempt {
                Ok(Ok(bytes)) => return Some(bytes),
                Ok(Err(e)) => tracing::debug!(%upstream, error = %e, "upstream resolver failed"),
                Err(_) => tracing::debug!(%upstream, "upstream resolver timed out"),
            }
        }
        None
    }
}

async fn forward_udp(upstream: SocketAddr, query: &[u8]) -> std::io::Result<Vec<u8>> {
    let bind: SocketAddr = if upstream.is_ipv4() {
        (Ipv4Addr::UNSPECIFIED, 0).into()
    } else {
        (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let sock = UdpSocket::bind(bind).await?;
    sock.connect(upstream).await?;
    sock.send(query).await?;
    let mut buf = vec![0u8; 65_535];
    loop {
        let n = sock.recv(&mut buf).await?;
        // Only the answer to this query (same id) counts.
        if n >= 2 && query.len() >= 2 && buf[..2] == query[..2] {
            buf.truncate(n);
            return Ok(buf);
        }
    }
}

async fn forward_tcp(upstream: SocketAddr, query: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut stream = TcpStream::connect(upstream).await?;
    write_framed(&mut stream, query).await?;
    read_framed(&mut stream).await
}

async fn write_framed(stream: &mut TcpStream, msg: &[u8]) -> std::io::Result<()> {
    let len = u16::try_from(msg.len())
        .map_err(|_| std::io::Error::other("DNS message over 65535 bytes"))?;
    let mut out = Vec::with_capacity(msg.len() + 2);
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(msg);
    stream.write_all(&out).await
}

async fn read_framed(stream: &mut TcpStream) -> std::io::Result<Vec<u8>> {
    let mut len = [0u8; 2];
    stream.read_exact(&mut len).await?;
    let mut buf = vec![0u8; usize::from(u16::from_be_bytes(len))];
    stream.read_exact(&mut buf).await?;
    Ok(buf)
}

/// Serves UDP until the process ends; each query in its own task.
pub async fn serve_udp(sock: UdpSocket, resolver: Resolver) {
    let sock = Arc::new(sock);
    let mut buf = vec![0u8; 4096];
    loop {
        let (n, peer) = match sock.recv_from(&mut buf).await {
            Ok(r) => r,
            Err(e) => {
                tracing::debug!(error = %e, "node DNS: UDP receive failed");
                tokio::time::sleep(ERROR_PAUSE).await;
                continue;
            }
        };
        let query = buf[..n].to_vec();
        let (sock, resolver) = (sock.clone(), resolver.clone());
        tokio::spawn(async move {
            if let Some(resp) = resolver.resolve(&query, false).await {
                let _ = sock.send_to(&resp, peer).await;
            }
        });
    }
}

/// Serves TCP until the process ends.
pub async fn serve_tcp(listener: TcpListener, resolver: Resolver) {
    loop {
        let mut stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                // Out of file descriptors, most likely: do not spin.
                tracing::debug!(error = %e, "node DNS: TCP accept failed");
                tokio::time::sleep(ERROR_PAUSE).await;
                continue;
            }
        };
        let resolver = resolver.clone();
        tokio::spawn(async move {
            while let Ok(Ok(query)) = tokio::time::timeout(TCP_IDLE, read_framed(&mut stream)).await
            {
                let Some(resp) = resolver.resolve(&query, true).await else {
                    return;
                };
                if write_framed(&mut stream, &resp).await.is_err() {
                    return;
                }
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hickory_proto::op::Query;
    use hickory_proto::rr::{Name, RecordType};

    fn query(name: &str) -> Vec<u8> {
        let mut q = Message::query();
        q.add_query(Query::query(Name::from_ascii(name).unwrap(), RecordType::A));
        q.to_vec().unwrap()
    }

    /// An upstream that answers every query with its own bytes marked as a response.
    async fn echo_upstream() -> SocketAddr {
        let sock = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let addr = sock.local_addr().unwrap();
        tokio::spawn(async move {
            let mut buf = vec![0u8; 512];
            while let Ok((n, peer)) = sock.recv_from(&mut buf).await {
                let mut m = Message::from_vec(&buf[..n]).unwrap();
                m.metadata.message_type = hickory_proto::op::MessageType::Response;
                m.metadata.response_code = ResponseCode::Refused;
                let _ = sock.send_to(&m.to_vec().unwrap(), peer).await;
            }
        });
        addr
    }

    async fn ask_udp(server: SocketAddr, bytes: &[u8]) -> Message {
        let sock = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        sock.send_to(bytes, server).await.unwrap();
        let mut buf = vec![0u8; 4096];
        let n = tokio::time::timeout(Duration::from_secs(5), sock.recv(&mut buf))
            .await
            .expect("an answer")
            .unwrap();
        Message::from_vec(&buf[..n]).unwrap()
    }

    #[tokio::test]
    async fn serves_its_names_forwards_the_rest_and_fails_without_upstreams() {
        let upstream = echo_upstream().await;
        let (_tx, rx) =
            watch::channel::<Instances>(Arc::new(vec![pier_gateway::CatalogInstance {
                service: "api".into(),
                ..Default::default()
            }]));
        let serve = |upstreams: Vec<SocketAddr>| {
            let rx = rx.clone();
            async move {
                let sock = UdpSocket::bind("127.0.0.1:0").await.unwrap();
                let addr = sock.local_addr().unwrap();
                tokio::spawn(serve_udp(
                    sock,
                    Resolver {
                        gateway_ip: Ipv4Addr::new(10, 1, 0, 1),
                        node: "n".into(),
                        instances: rx,
                        upstreams: Arc::new(upstreams),
                    },
                ));
                addr
            }
        };
        let dns = serve(vec![upstream]).await;
        let m = ask_udp(dns, &query("api.internal.")).await;
        assert_eq!(m.answers.len(), 1);
        let m = ask_udp(dns, &query("example.com.")).await;
        assert_eq!(
            m.metadata.response_code,
            ResponseCode::Refused,
            "the upstream's answer, relayed"
        );
        let lonely = serve(vec![]).await;
        let m = ask_udp(lonely, &query("example.com.")).await;
        assert_eq!(m.metadata.response_code, ResponseCode::ServFail);
    }

    #[test]
    fn upstreams_come_from_resolv_conf_without_ourselves() {
        let text = "# comment\nsearch example.com\nnameserver 10.0.0.2\nnameserver 127.0.0.53\nnameserver fe80::1%eth0\nnameserver 172.20.0.1\noptions ndots:1\n";
        let got = upstreams_from_resolv_conf(text, "172.20.0.1".parse().unwrap());
        let want: Vec<SocketAddr> = vec![
            "10.0.0.2:53".parse().unwrap(),
            "127.0.0.53:53".parse().unwrap(),
            "[fe80::1]:53".parse().unwrap(),
        ];
        assert_eq!(got, want);
    }

    #[test]
    fn upstream_flags() {
        assert_eq!(
            parse_upstream("1.2.3.4").unwrap(),
            "1.2.3.4:53".parse().unwrap()
        );
        assert_eq!(
            parse_upstream("127.0.0.1:5353").unwrap(),
            "127.0.0.1:5353".parse().unwrap()
        );
        assert!(parse_upstream("dns.example").is_err());
    }
}
