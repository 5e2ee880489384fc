//! `/_/bin/<name>`: the iPXE binaries UEFI HTTP Boot firmware downloads.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use ironpxe_core::{BootSpec, BootUrls, FileRef, StaticBooter};
use ironpxe_http::{router, serve, HttpState};
use tokio::net::TcpListener;

async fn start() -> BootUrls {
    let booter = Arc::new(StaticBooter::new(BootSpec {
        kernel: FileRef::parse("/srv/vmlinuz").unwrap(),
        initrds: vec![],
        cmdline: String::new(),
        message: None,
        loader: Default::default(),
    }));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let state = HttpState::new(booter).unwrap().with_ipxe_binaries([
        ("snponly.efi".to_string(), Bytes::from_static(b"MZ snponly")),
        ("undionly.kpxe".to_string(), Bytes::from_static(b"kpxe")),
    ]);
    tokio::spawn(serve(
        listener,
        router(state),
        std::future::pending(),
        Duration::from_secs(10),
    ));
    BootUrls::http(addr.ip(), addr.port())
}

#[tokio::test]
async fn efi_binary_is_served_with_efi_type_and_length() {
    let base = start().await;
    let r = reqwest::get(base.binary("snponly.efi")).await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "application/efi");
    assert_eq!(r.headers()["content-length"], "10");
    assert_eq!(&r.bytes().await.unwrap()[..], b"MZ snponly");

    let r = reqwest::get(base.binary("undionly.kpxe")).await.unwrap();
    assert_eq!(r.headers()["content-type"], "application/octet-stream");
    assert_eq!(&r.bytes().await.unwrap()[..], b"kpxe");
}

#[tokio::test]
async fn head_has_length_and_no_body() {
    let base = start().await;
    let r = reqwest::Client::new()
        .head(base.binary("snponly.efi"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-length"], "10");
    assert!(r.bytes().await.unwrap().is_empty());
}

#[tokio::test]
async fn unknown_names_and_traversal_are_404() {
    let base = start().await;
    let unknown = base.binary("ipxe.efi");
    // Names that are not one path segment, written by hand: the builder would
    // encode them.
    for url in [
        unknown,
        format!("{base}/_/bin/..%2Fetc%2Fpasswd"),
        format!("{base}/_/bin/"),
        format!("{base}/_/bin/snponly.efi/x"),
    ] {
        let r = reqwest::get(&url).await.unwrap();
        assert_eq!(r.status(), 404, "{url}");
    }
}
