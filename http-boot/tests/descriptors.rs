//! At the open-file limit a download waits for a descriptor instead of failing.
//! One test per binary: it lowers the process's own open-file limit.

use std::sync::Arc;
use std::time::Duration;

use ironpxe_core::{BootSpec, BootUrls, Booter, FileRef, StaticBooter};
use ironpxe_http::{router, serve, HttpState};
use nix::sys::resource::{getrlimit, setrlimit, Resource};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_download_at_the_file_limit_waits_for_a_descriptor() {
    let dir = tempfile::tempdir().unwrap();
    let kernel = dir.path().join("vmlinuz");
    let bytes: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    std::fs::write(&kernel, &bytes).unwrap();
    let spec = BootSpec {
        kernel: FileRef::Local(kernel.clone()),
        initrds: vec![],
        cmdline: String::new(),
        message: None,
        loader: Default::default(),
    };
    let id = spec.kernel.id();
    let booter: Arc<dyn Booter> = Arc::new(StaticBooter::new(spec));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(serve(
        listener,
        router(HttpState::new(booter).unwrap()),
        std::future::pending(),
        Duration::from_secs(10),
    ));
    let url = BootUrls::http(addr.ip(), addr.port()).file(
        "52:54:00:12:34:56".parse().unwrap(),
        ironpxe_core::ClientArch::Bios,
        &id,
    );
    let path = url.split_once(&addr.to_string()).unwrap().1.to_string();
    // Connect first: the connection and its accepted end hold their descriptors.
    let mut conn = TcpStream::connect(addr).await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;

    // Use up every descriptor the (lowered) limit leaves.
    let (_, hard) = getrlimit(Resource::RLIMIT_NOFILE).unwrap();
    let open_now = std::fs::read_dir("/proc/self/fd").unwrap().count() as u64;
    setrlimit(Resource::RLIMIT_NOFILE, open_now + 16, hard).unwrap();
    let mut hog = Vec::new();
    while let Ok(f) = std::fs::File::open("/dev/null") {
        hog.push(f);
    }
    assert!(!hog.is_empty());
    conn.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await
    .unwrap();
    // The server cannot open the file now; a moment later descriptors come free.
    tokio::time::sleep(Duration::from_millis(300)).await;
    drop(hog);
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), conn.read_to_end(&mut answer))
        .await
        .expect("the download did not finish")
        .unwrap();
    setrlimit(Resource::RLIMIT_NOFILE, hard, hard).unwrap();
    let head_end = answer.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
    let head = String::from_utf8_lossy(&answer[..head_end]);
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert_eq!(&answer[head_end + 4..], &bytes[..]);
}
