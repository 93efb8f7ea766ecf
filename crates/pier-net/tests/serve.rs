//! Real listeners: plain and TLS, the caller's identity from its certificate, the connection
//! limit, and graceful shutdown.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::routing::get;
use axum::{Extension, Router};
use pier_net::{serve, Caller, ListenerConfig};
use pier_security::ca::{ClusterCa, NodeIdentity, Role, NODE_VALIDITY};
use pier_security::tls::{client_config, server_config, ClientCerts};

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn router() -> Router {
    Router::new().route(
        "/who",
        get(|Extension(caller): Extension<Caller>| async move {
            match caller.0 {
                Some(id) => id.uri(),
                None => "anonymous".to_string(),
            }
        }),
    )
}

#[tokio::test]
async fn tls_listeners_name_their_callers_and_plain_ones_do_not() {
    let t = now();
    let ca = ClusterCa::generate(t).unwrap();
    let srv = ca
        .issue(
            &NodeIdentity::new(Role::Server, "s1").unwrap(),
            &["127.0.0.1".into()],
            NODE_VALIDITY,
            t,
        )
        .unwrap();
    let agent_id = NodeIdentity::new(Role::Agent, "n1").unwrap();
    let agent = ca.issue(&agent_id, &[], NODE_VALIDITY, t).unwrap();
    let tls = server_config(
        &[ca.cert_pem()],
        &srv.cert_pem,
        &srv.key_pem,
        ClientCerts::Optional,
        &[b"h2", b"http/1.1"],
    )
    .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(serve(
        listener,
        router(),
        ListenerConfig::tls(pier_net::server_tls(tls), 16),
        async move {
            let _ = stop_rx.await;
        },
    ));
    let with_cert = reqwest::Client::builder()
        .tls_backend_preconfigured(
            client_config(&[ca.cert_pem()], Some((&agent.cert_pem, &agent.key_pem))).unwrap(),
        )
        .build()
        .unwrap();
    let body = with_cert
        .get(format!("https://{addr}/who"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(body, agent_id.uri());
    let anonymous = reqwest::Client::builder()
        .tls_backend_preconfigured(client_config(&[ca.cert_pem()], None).unwrap())
        .build()
        .unwrap();
    let body = anonymous
        .get(format!("https://{addr}/who"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(body, "anonymous");
    // Plain HTTP to a TLS listener gets nowhere.
    let plain = reqwest::Client::new()
        .get(format!("http://{addr}/who"))
        .timeout(Duration::from_secs(5))
        .send()
        .await;
    assert!(plain.is_err() || !plain.unwrap().status().is_success());
    let _ = stop_tx.send(());
    tokio::time::timeout(Duration::from_secs(5), server)
        .await
        .expect("listener stops on shutdown")
        .unwrap()
        .unwrap();
}

#[tokio::test]
async fn connections_beyond_the_limit_wait_until_one_closes() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(serve(
        listener,
        router(),
        ListenerConfig::plain(1),
        std::future::pending(),
    ));
    // One client holds the only slot with a keep-alive connection.
    let first = reqwest::Client::new();
    let r = first
        .get(format!("http://{addr}/who"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.text().await.unwrap(), "anonymous");
    // A second client's connection is not served while the first stays open.
    let second = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()
        .unwrap();
    let blocked = second
        .get(format!("http://{addr}/who"))
        .timeout(Duration::from_millis(500))
        .send()
        .await;
    assert!(blocked.is_err(), "a connection beyond the limit was served");
    drop(first);
    // With the slot free (the server notices the close), the next one gets through.
    let mut served = false;
    for _ in 0..50 {
        if let Ok(r) = second
            .get(format!("http://{addr}/who"))
            .timeout(Duration::from_millis(500))
            .send()
            .await
        {
            served = r.status().is_success();
            break;
        }
    }
    assert!(served, "the freed slot was never used");
}
