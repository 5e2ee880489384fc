//! A client that reaches ironpxe over IPv6 gets a script whose URLs are IPv6 too:
//! `http://[addr]:port/...`, from the Host header iPXE sends (`[addr]:port`) or,
//! without one, from the connection's local address.

use std::sync::Arc;
use std::time::Duration;

use ironpxe_core::{BootSpec, FileRef, StaticBooter};
use ironpxe_http::{router, serve, HttpState};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

async fn get(addr: std::net::SocketAddr, head: &str) -> String {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(head.as_bytes()).await.unwrap();
    let mut out = String::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_string(&mut out))
        .await
        .unwrap()
        .unwrap();
    out
}

#[tokio::test]
async fn scripts_for_ipv6_clients_name_ipv6_urls() {
    let Ok(listener) = TcpListener::bind("[::1]:0").await else {
        panic!("this test needs IPv6 on loopback (::1)");
    };
    let addr = listener.local_addr().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let kernel = dir.path().join("vmlinuz");
    std::fs::write(&kernel, b"kernel").unwrap();
    let spec = BootSpec {
        kernel: FileRef::Local(kernel),
        initrds: vec![],
        cmdline: "console=ttyS0".into(),
        message: None,
        loader: Default::default(),
    };
    let state = HttpState::new(Arc::new(StaticBooter::new(spec))).unwrap();
    tokio::spawn(serve(
        listener,
        router(state),
        std::future::pending(),
        Duration::from_secs(1),
    ));
    let port = addr.port();
    let path = "/_/ipxe?mac=52:54:00:12:34:56&arch=7";
    // What iPXE sends for http://[::1]:port/...
    let with_host = get(
        addr,
        &format!("GET {path} HTTP/1.1\r\nHost: [::1]:{port}\r\nConnection: close\r\n\r\n"),
    )
    .await;
    let base = format!("http://[::1]:{port}/_/");
    assert!(
        with_host.contains(&format!("{base}file?name=")),
        "{with_host}"
    );
    assert!(
        with_host.contains(&format!("{base}booting?mac=")),
        "{with_host}"
    );
    // HTTP/1.0 without a Host header: the connection's local address, bracketed.
    let without = get(addr, &format!("GET {path} HTTP/1.0\r\n\r\n")).await;
    assert!(without.contains(&format!("{base}file?name=")), "{without}");
}
