//! The HTTP server on a real 127.0.0.1 socket, with reqwest and raw TCP clients.

use std::collections::HashMap;
use std::io::{Seek, SeekFrom, Write};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, Once};
use std::time::Duration;

use futures_util::StreamExt;
use ironpxe_core::urls::{BootRoute, FileQuery, MachineQuery};
use ironpxe_core::{
    BootDecision, BootSpec, BootUrls, Booter, ClientArch, FileId, FileRef, MacAddr, StaticBooter,
};
use ironpxe_http::{router, serve, HttpState};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

// ---- capture of `ironpxe::event` events --------------------------------------

type Fields = HashMap<String, String>;
static EVENTS: Mutex<Vec<Fields>> = Mutex::new(Vec::new());

/// Keeps every boot event, typed, as its name and fields.
struct Capture;

impl ironpxe_core::EventSink for Capture {
    fn event(&self, event: &ironpxe_core::BootEvent) {
        let mut f = Fields::new();
        f.insert("event".into(), event.name().into());
        event.fields(&mut |k, v| {
            f.insert(k.into(), v.to_string());
        });
        EVENTS.lock().unwrap_or_else(|e| e.into_inner()).push(f);
    }
}

fn capture_events() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        assert!(ironpxe_core::event::set_sink(Arc::new(Capture)));
    });
}

/// Waits (up to 5 s) for an event named `name` whose `key` field is `value`.
async fn event(name: &str, key: &str, value: &str) -> Fields {
    for _ in 0..500 {
        let found = EVENTS
            .lock()
            .unwrap()
            .iter()
            .find(|f| {
                f.get("event").map(String::as_str) == Some(name)
                    && f.get(key).map(String::as_str) == Some(value)
            })
            .cloned();
        if let Some(f) = found {
            return f;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!(
        "no {name} event with {key}={value}; got {:?}",
        EVENTS.lock().unwrap_or_else(|e| e.into_inner())
    );
}

// ---- servers and fixtures -----------------------------------------------------

const MAC: &str = "52:54:00:12:34:56";

/// Starts ironpxe's HTTP server on 127.0.0.1 and returns its base URL.
async fn start(booter: Arc<dyn Booter>) -> String {
    capture_events();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let state = HttpState::new(booter).unwrap();
    tokio::spawn(serve(
        listener,
        router(state),
        std::future::pending(),
        Duration::from_secs(10),
    ));
    format!("http://{addr}")
}

/// A temp dir holding a kernel and an initrd with known contents.
struct Files {
    _dir: tempfile::TempDir,
    kernel: FileRef,
    initrd: FileRef,
    kernel_bytes: Vec<u8>,
}

fn files() -> Files {
    let dir = tempfile::tempdir().unwrap();
    let kernel_bytes: Vec<u8> = (0..100_000u32).map(|i| (i * 7 % 251) as u8).collect();
    std::fs::write(dir.path().join("vmlinuz"), &kernel_bytes).unwrap();
    std::fs::write(dir.path().join("initrd.img"), b"initrd").unwrap();
    Files {
        kernel: FileRef::Local(dir.path().join("vmlinuz")),
        initrd: FileRef::Local(dir.path().join("initrd.img")),
        _dir: dir,
        kernel_bytes,
    }
}

fn static_booter(f: &Files, cmdline: &str) -> Arc<dyn Booter> {
    Arc::new(StaticBooter::new(BootSpec {
        kernel: f.kernel.clone(),
        initrds: vec![f.initrd.clone()],
        cmdline: cmdline.into(),
        message: None,
        loader: Default::default(),
    }))
}

struct Ignoring;

impl Booter for Ignoring {
    fn decide(&self, _: MacAddr, _: ClientArch, _: std::time::Duration) -> BootDecision {
        BootDecision::Ignore("not in the inventory".into())
    }
    fn file(&self, _: &FileId) -> Option<FileRef> {
        None
    }
}

fn urls(base: &str) -> BootUrls {
    BootUrls::from_base(base).unwrap()
}

fn mac(s: &str) -> MacAddr {
    s.parse().unwrap()
}

/// The URL of `f` as the script of [`MAC`] (BIOS) names it.
fn file_url(base: &str, f: &FileRef) -> String {
    urls(base).file(mac(MAC), ClientArch::Bios, &f.id())
}

/// Sends a raw request and returns the whole response (the server closes).
async fn raw(base: &str, request: &str) -> Vec<u8> {
    let addr: SocketAddr = base.trim_start_matches("http://").parse().unwrap();
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(request.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out))
        .await
        .expect("server did not close the connection")
        .unwrap();
    out
}

// ---- tests --------------------------------------------------------------------

#[tokio::test]
async fn script_for_bios_and_efi() {
    let f = files();
    let base = start(static_booter(&f, "console=ttyS0 nixos.install=/dev/sda")).await;
    let url = urls(&base).script(mac(MAC), ClientArch::Bios);
    let r = reqwest::get(&url).await.unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/plain"));
    let bios = r.text().await.unwrap();
    assert!(bios.starts_with("#!ipxe\n"));
    // The base URL is the Host the client used.
    assert!(bios.contains(&format!(
        "kernel --name vmlinuz {} console=ttyS0 nixos.install=/dev/sda ||",
        file_url(&base, &f.kernel)
    )));
    assert!(bios.contains(&format!(
        "initrd --name initrd.img {} ||",
        file_url(&base, &f.initrd)
    )));
    assert!(bios.contains(&format!("{base}/_/booting?mac={MAC}&arch=0")));
    assert!(!bios.contains("initrd="));
    event("http.script", "mac", MAC).await;

    let efi = reqwest::get(urls(&base).script(mac(MAC), ClientArch::EfiX64))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(efi.contains("console=ttyS0 nixos.install=/dev/sda initrd=initrd.img ||"));
}

#[tokio::test]
async fn script_without_host_header_uses_the_local_address() {
    let f = files();
    let base = start(static_booter(&f, "quiet")).await;
    let resp = raw(
        &base,
        &format!(
            "GET {} HTTP/1.0\r\n\r\n",
            BootRoute::Script(MachineQuery {
                mac: mac(MAC),
                arch: ClientArch::Bios
            })
        ),
    )
    .await;
    let text = String::from_utf8(resp).unwrap();
    assert!(text.starts_with("HTTP/1.0 200"), "{text}");
    assert!(text.contains(&format!("{base}/_/file?name=")), "{text}");
}

#[tokio::test]
async fn bad_parameters_are_400() {
    let f = files();
    let base = start(static_booter(&f, "")).await;
    for q in [
        "arch=0&mac=nonsense",
        "arch=0",
        "mac=52:54:00:12:34:56",
        "arch=x&mac=52:54:00:12:34:56",
    ] {
        let r = reqwest::get(format!("{base}/_/ipxe?{q}")).await.unwrap();
        assert_eq!(r.status(), 400, "{q}");
        let body = r.text().await.unwrap();
        assert_eq!(body.lines().count(), 1, "{body}");
    }
    let r = reqwest::get(format!("{base}/_/booting?mac=zz&arch=0"))
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let r = reqwest::get(format!("{base}/_/file")).await.unwrap();
    assert_eq!(r.status(), 400);
    // A file URL without its machine.
    let r = reqwest::get(format!("{base}/_/file?name={}", f.kernel.id()))
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert_eq!(r.text().await.unwrap(), "missing mac parameter\n");
}

#[tokio::test]
async fn ignored_machines_and_unknown_files_are_404() {
    let base = start(Arc::new(Ignoring)).await;
    let r = reqwest::get(urls(&base).script(mac("52:54:00:00:00:99"), ClientArch::Bios))
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    let ev = event("http.ignored", "mac", "52:54:00:00:00:99").await;
    assert_eq!(ev["reason"], "not in the inventory");

    let f = files();
    let base = start(static_booter(&f, "")).await;
    let r = reqwest::get(format!(
        "{base}/_/file?name=0123456789abcdef&mac={MAC}&arch=0"
    ))
    .await
    .unwrap();
    assert_eq!(r.status(), 404);
    // A file the booter knows but that is gone from disk.
    let gone = FileRef::Local(f._dir.path().join("gone"));
    let base = start(Arc::new(StaticBooter::new(BootSpec {
        kernel: gone.clone(),
        initrds: vec![],
        cmdline: String::new(),
        message: None,
        loader: Default::default(),
    })))
    .await;
    let r = reqwest::get(file_url(&base, &gone)).await.unwrap();
    assert_eq!(r.status(), 404);
}

#[tokio::test]
async fn get_is_byte_exact_with_content_length() {
    let f = files();
    let base = start(static_booter(&f, "")).await;
    let r = reqwest::get(file_url(&base, &f.kernel)).await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-length"], "100000");
    assert_eq!(r.headers()["accept-ranges"], "bytes");
    assert_eq!(r.bytes().await.unwrap(), f.kernel_bytes);
    let id = f.kernel.id().to_string();
    let start = event("http.file.start", "id", &id).await;
    assert_eq!(start["bytes"], "100000");
    assert_eq!(start["file"], f.kernel.to_string());
    assert!(start["peer"].starts_with("127.0.0.1:"));
    let done = event("http.file.done", "id", &id).await;
    assert_eq!(done["bytes"], "100000");
    assert!(done.contains_key("duration_ms"));
}

#[tokio::test]
async fn empty_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("empty");
    std::fs::write(&path, b"").unwrap();
    let empty = FileRef::Local(path);
    let base = start(Arc::new(StaticBooter::new(BootSpec {
        kernel: empty.clone(),
        initrds: vec![],
        cmdline: String::new(),
        message: None,
        loader: Default::default(),
    })))
    .await;
    let r = reqwest::get(file_url(&base, &empty)).await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-length"], "0");
    assert!(r.bytes().await.unwrap().is_empty());
    event("http.file.done", "id", empty.id().as_str()).await;
    let r = reqwest::Client::new()
        .get(file_url(&base, &empty))
        .header("range", "bytes=0-")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 416);
}

#[tokio::test]
async fn head_has_length_and_no_body() {
    let f = files();
    let base = start(static_booter(&f, "")).await;
    let r = reqwest::Client::new()
        .head(file_url(&base, &f.kernel))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-length"], "100000");
    // On the wire: the response ends right after the headers.
    let path = BootRoute::File(FileQuery {
        id: f.kernel.id(),
        machine: MachineQuery {
            mac: mac(MAC),
            arch: ClientArch::Bios,
        },
    });
    let resp = raw(
        &base,
        &format!("HEAD {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"),
    )
    .await;
    let text = String::from_utf8(resp).unwrap();
    assert!(
        text.to_ascii_lowercase()
            .contains("content-length: 100000\r\n"),
        "{text}"
    );
    assert!(text.ends_with("\r\n\r\n"), "{text:?}");
}

#[tokio::test]
async fn ranges_are_served() {
    let f = files();
    let base = start(static_booter(&f, "")).await;
    let url = file_url(&base, &f.kernel);
    let c = reqwest::Client::new();
    let k = &f.kernel_bytes;
    for (range, start, end) in [
        ("bytes=10-19", 10, 19),
        ("bytes=-5", 99_995, 99_999),
        ("bytes=99990-", 99_990, 99_999),
        ("bytes=0-999999", 0, 99_999),
    ] {
        let r = c.get(&url).header("range", range).send().await.unwrap();
        assert_eq!(r.status(), 206, "{range}");
        assert_eq!(
            r.headers()["content-range"],
            format!("bytes {start}-{end}/100000")
        );
        assert_eq!(r.headers()["content-length"], (end - start + 1).to_string());
        assert_eq!(r.bytes().await.unwrap(), &k[start..=end], "{range}");
    }
    let r = c
        .get(&url)
        .header("range", "bytes=100000-")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 416);
    assert_eq!(r.headers()["content-range"], "bytes */100000");
    // Multiple ranges are not supported: the whole file comes back.
    let r = c
        .get(&url)
        .header("range", "bytes=0-1,5-6")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.bytes().await.unwrap().len(), 100_000);
}

#[tokio::test]
async fn large_sparse_file_streams() {
    const SIZE: u64 = 64 << 20;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("big-initrd");
    let mut file = std::fs::File::create(&path).unwrap();
    file.set_len(SIZE).unwrap();
    // Markers at the start, middle and last byte show the order is kept.
    for (at, b) in [(0, 0xAA), (SIZE / 2, 0xBB), (SIZE - 1, 0xCC)] {
        file.seek(SeekFrom::Start(at)).unwrap();
        file.write_all(&[b]).unwrap();
    }
    drop(file);
    let big = FileRef::Local(path);
    let base = start(Arc::new(StaticBooter::new(BootSpec {
        kernel: big.clone(),
        initrds: vec![],
        cmdline: String::new(),
        message: None,
        loader: Default::default(),
    })))
    .await;
    let r = reqwest::get(file_url(&base, &big)).await.unwrap();
    assert_eq!(r.content_length(), Some(SIZE));
    let mut pos = 0u64;
    let mut markers = Vec::new();
    let mut stream = r.bytes_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.unwrap();
        for (i, &b) in chunk.iter().enumerate() {
            if b != 0 {
                markers.push((pos + i as u64, b));
            }
        }
        pos += chunk.len() as u64;
    }
    assert_eq!(pos, SIZE);
    assert_eq!(markers, [(0, 0xAA), (SIZE / 2, 0xBB), (SIZE - 1, 0xCC)]);
    event("http.file.done", "id", big.id().as_str()).await;
}

#[tokio::test]
async fn client_going_away_is_logged_as_failed() {
    const SIZE: u64 = 32 << 20;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("abandoned");
    std::fs::File::create(&path).unwrap().set_len(SIZE).unwrap();
    let fref = FileRef::Local(path);
    let base = start(Arc::new(StaticBooter::new(BootSpec {
        kernel: fref.clone(),
        initrds: vec![],
        cmdline: String::new(),
        message: None,
        loader: Default::default(),
    })))
    .await;
    let r = reqwest::get(file_url(&base, &fref)).await.unwrap();
    let mut stream = r.bytes_stream();
    stream.next().await.unwrap().unwrap();
    drop(stream);
    let ev = event("http.file.failed", "id", fref.id().as_str()).await;
    assert!(ev["reason"].contains("went away"), "{ev:?}");
}

#[tokio::test]
async fn booting_callback_is_logged() {
    let f = files();
    let base = start(static_booter(&f, "")).await;
    let r = reqwest::get(urls(&base).booting(mac("52:54:00:00:00:42"), ClientArch::EfiBc))
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.bytes().await.unwrap().is_empty());
    let ev = event("http.booting", "mac", "52:54:00:00:00:42").await;
    assert_eq!(ev["arch"], "efi-bc");
    assert!(ev["peer"].starts_with("127.0.0.1:"));
}

/// An upstream server for remote files: `/kernel` with a length, `/chunked`
/// without one, anything else 404.
async fn upstream(data: Vec<u8>) -> String {
    use axum::body::Body;
    use axum::routing::get;
    let d1 = data.clone();
    let app = axum::Router::new()
        .route("/kernel", get(move || async move { d1.clone() }))
        .route(
            "/chunked",
            get(move || async move {
                let chunks: Vec<Result<Vec<u8>, std::io::Error>> =
                    data.chunks(1000).map(|c| Ok(c.to_vec())).collect();
                Body::from_stream(futures_util::stream::iter(chunks))
            }),
        );
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    format!("http://{addr}")
}

#[tokio::test]
async fn remote_files_stream_through() {
    let data: Vec<u8> = (0..50_000u32).map(|i| (i % 253) as u8).collect();
    let up = upstream(data.clone()).await;
    let kernel = FileRef::parse(&format!("{up}/kernel")).unwrap();
    let chunked = FileRef::parse(&format!("{up}/chunked")).unwrap();
    let missing = FileRef::parse(&format!("{up}/missing")).unwrap();
    let base = start(Arc::new(StaticBooter::new(BootSpec {
        kernel: kernel.clone(),
        initrds: vec![chunked.clone(), missing.clone()],
        cmdline: String::new(),
        message: None,
        loader: Default::default(),
    })))
    .await;

    let r = reqwest::get(file_url(&base, &kernel)).await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-length"], "50000");
    assert_eq!(r.bytes().await.unwrap(), data);
    event("http.file.done", "id", kernel.id().as_str()).await;

    let r = reqwest::Client::new()
        .head(file_url(&base, &kernel))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-length"], "50000");

    let r = reqwest::get(file_url(&base, &chunked)).await.unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.headers().get("content-length").is_none());
    assert_eq!(r.bytes().await.unwrap(), data);
    event("http.file.done", "id", chunked.id().as_str()).await;

    let r = reqwest::get(file_url(&base, &missing)).await.unwrap();
    assert_eq!(r.status(), 502);

    // Unreachable upstream (nothing listens on port 9 of 127.0.0.1).
    let dead = FileRef::parse("http://127.0.0.1:9/k").unwrap();
    let base = start(Arc::new(StaticBooter::new(BootSpec {
        kernel: dead.clone(),
        initrds: vec![],
        cmdline: String::new(),
        message: None,
        loader: Default::default(),
    })))
    .await;
    let r = reqwest::get(file_url(&base, &dead)).await.unwrap();
    assert_eq!(r.status(), 502);
}

#[tokio::test]
async fn serve_stops_on_shutdown() {
    let f = files();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let state = HttpState::new(static_booter(&f, "")).unwrap();
    let server = tokio::spawn(serve(
        listener,
        router(state),
        async {
            let _ = rx.await;
        },
        Duration::from_secs(10),
    ));
    let r = reqwest::get(urls(&base).booting(mac(MAC), ClientArch::Bios))
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    tx.send(()).unwrap();
    let result = tokio::time::timeout(Duration::from_secs(5), server)
        .await
        .expect("serve did not stop")
        .unwrap();
    assert!(result.is_ok());
}

/// A server over one large local file; returns the file, its id's URL path, the
/// address, the shutdown trigger and the server task.
async fn start_big(
    drain: Duration,
) -> (
    tempfile::TempDir,
    Vec<u8>,
    String,
    SocketAddr,
    tokio::sync::oneshot::Sender<()>,
    tokio::task::JoinHandle<std::io::Result<()>>,
) {
    let dir = tempfile::tempdir().unwrap();
    let big: Vec<u8> = (0..8_000_000u32).map(|i| (i % 253) as u8).collect();
    std::fs::write(dir.path().join("big"), &big).unwrap();
    let kernel = FileRef::Local(dir.path().join("big"));
    let path = BootRoute::File(FileQuery {
        id: kernel.id(),
        machine: MachineQuery {
            mac: mac(MAC),
            arch: ClientArch::Bios,
        },
    })
    .to_string();
    let booter = Arc::new(StaticBooter::new(BootSpec {
        kernel,
        initrds: vec![],
        cmdline: String::new(),
        message: None,
        loader: Default::default(),
    }));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let state = HttpState::new(booter).unwrap();
    let server = tokio::spawn(serve(
        listener,
        router(state),
        async {
            let _ = rx.await;
        },
        drain,
    ));
    (dir, big, path, addr, tx, server)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_refuses_new_connections_and_lets_a_download_finish() {
    let (_dir, big, path, addr, stop, server) = start_big(Duration::from_secs(20)).await;
    let mut dl = TcpStream::connect(addr).await.unwrap();
    dl.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut first = vec![0u8; 1024];
    dl.read_exact(&mut first).await.unwrap();
    stop.send(()).unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        TcpStream::connect(addr).await.is_err(),
        "a new connection was accepted after shutdown"
    );
    let mut rest = Vec::new();
    dl.read_to_end(&mut rest).await.unwrap();
    let all = [first, rest].concat();
    let split = all.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
    assert_eq!(all[split + 4..].len(), big.len());
    assert!(all[split + 4..] == big[..]);
    let r = tokio::time::timeout(Duration::from_secs(5), server)
        .await
        .expect("serve did not stop once the download finished");
    assert!(r.unwrap().is_ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_abandons_a_stalled_download_after_the_drain() {
    let (_dir, _big, path, addr, stop, server) = start_big(Duration::from_millis(500)).await;
    let mut dl = TcpStream::connect(addr).await.unwrap();
    dl.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut first = vec![0u8; 1024];
    dl.read_exact(&mut first).await.unwrap();
    let asked = std::time::Instant::now();
    stop.send(()).unwrap();
    // The client reads nothing more: serve gives up after the drain.
    let r = tokio::time::timeout(Duration::from_secs(5), server)
        .await
        .expect("serve did not stop after the drain");
    assert!(r.unwrap().is_ok());
    assert!(asked.elapsed() >= Duration::from_millis(500));
    drop(dl);
}

// ---- the connection driver ------------------------------------------------------

/// Reads one answer with a Content-Length body from `s`: (head, body).
async fn read_answer(s: &mut TcpStream, pending: &mut Vec<u8>) -> (String, Vec<u8>) {
    let mut chunk = [0u8; 8192];
    let head_end = loop {
        if let Some(i) = pending.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut chunk))
            .await
            .expect("no answer within 5 s")
            .unwrap();
        assert!(n > 0, "connection closed before a full head: {pending:?}");
        pending.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8(pending[..head_end].to_vec()).unwrap();
    let len: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length: "))
        .expect("answer without content-length")
        .trim()
        .parse()
        .unwrap();
    pending.drain(..head_end);
    while pending.len() < len {
        let n = s.read(&mut chunk).await.unwrap();
        assert!(n > 0, "connection closed inside a body");
        pending.extend_from_slice(&chunk[..n]);
    }
    let body = pending.drain(..len).collect();
    (head, body)
}

#[tokio::test]
async fn pipelined_requests_on_one_connection_are_answered_in_order() {
    let f = files();
    let base = start(static_booter(&f, "quiet")).await;
    let addr: SocketAddr = base.trim_start_matches("http://").parse().unwrap();
    let kernel = file_url(&base, &f.kernel);
    let kernel_path = kernel.trim_start_matches(&base);
    let script = BootRoute::Script(MachineQuery {
        mac: mac(MAC),
        arch: ClientArch::Bios,
    })
    .to_string();
    // Three requests in one write: script, a kernel range, the whole kernel.
    let reqs = format!(
        "GET {script} HTTP/1.1\r\nHost: {addr}\r\n\r\n\
         GET {kernel_path} HTTP/1.1\r\nHost: {addr}\r\nRange: bytes=10-19\r\n\r\n\
         GET {kernel_path} HTTP/1.1\r\nHost: {addr}\r\n\r\n"
    );
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(reqs.as_bytes()).await.unwrap();
    let mut pending = Vec::new();
    let (h1, b1) = read_answer(&mut s, &mut pending).await;
    assert!(h1.starts_with("HTTP/1.1 200"), "{h1}");
    assert!(String::from_utf8(b1).unwrap().starts_with("#!ipxe"));
    let (h2, b2) = read_answer(&mut s, &mut pending).await;
    assert!(h2.starts_with("HTTP/1.1 206"), "{h2}");
    assert_eq!(b2, f.kernel_bytes[10..20]);
    let (h3, b3) = read_answer(&mut s, &mut pending).await;
    assert!(h3.starts_with("HTTP/1.1 200"), "{h3}");
    assert_eq!(
        b3, f.kernel_bytes,
        "the sendfile body differs from the file"
    );
    assert!(pending.is_empty());
}

#[tokio::test]
async fn oversized_head_is_431_and_closed() {
    let f = files();
    let base = start(static_booter(&f, "")).await;
    let big = "x".repeat(ironpxe_http::MAX_HEAD);
    let resp = raw(
        &base,
        &format!("GET /_/ipxe HTTP/1.1\r\nX-Big: {big}\r\n\r\n"),
    )
    .await;
    let text = String::from_utf8_lossy(&resp);
    assert!(text.starts_with("HTTP/1.1 431"), "{text}");
}

#[tokio::test]
async fn too_many_headers_and_garbage_are_refused() {
    let f = files();
    let base = start(static_booter(&f, "")).await;
    let many: String = (0..=ironpxe_http::MAX_HEADERS)
        .map(|i| format!("X-{i}: y\r\n"))
        .collect();
    let resp = raw(&base, &format!("GET /_/ipxe HTTP/1.1\r\n{many}\r\n")).await;
    assert!(String::from_utf8_lossy(&resp).starts_with("HTTP/1.1 431"));
    let resp = raw(&base, "\x00\x01 garbage\r\n\r\n").await;
    assert!(String::from_utf8_lossy(&resp).starts_with("HTTP/1.1 400"));
    let resp = raw(
        &base,
        "POST /_/booting HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    )
    .await;
    assert!(String::from_utf8_lossy(&resp).starts_with("HTTP/1.1 501"));
}

#[tokio::test]
async fn connection_close_is_honoured() {
    let f = files();
    let base = start(static_booter(&f, "")).await;
    let kernel = file_url(&base, &f.kernel);
    let path = kernel.trim_start_matches(&base);
    // `raw` fails unless the server closes after the answer.
    let resp = raw(
        &base,
        &format!("GET {path} HTTP/1.1\r\nConnection: close\r\n\r\n"),
    )
    .await;
    let text = String::from_utf8_lossy(&resp);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(text.contains("connection: close"), "{text}");
    assert!(resp.ends_with(&f.kernel_bytes));
}

/// A body that is not ready (a live event stream) gets its head and every piece
/// written at once, not when enough bytes have gathered to fill a segment.
#[tokio::test]
async fn a_streaming_body_is_flushed_before_it_waits() {
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<bytes::Bytes, std::io::Error>>(4);
    let rx = Arc::new(Mutex::new(Some(rx)));
    let app = axum::Router::new().route(
        "/live",
        axum::routing::get(move || {
            let rx = rx.lock().unwrap().take().expect("one request");
            async move {
                let stream = futures_util::stream::unfold(rx, |mut rx| async move {
                    rx.recv().await.map(|item| (item, rx))
                });
                axum::body::Body::from_stream(stream)
            }
        }),
    );
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(serve(
        listener,
        app,
        std::future::pending(),
        Duration::from_secs(1),
    ));
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(b"GET /live HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    let steps: [(Option<&'static [u8]>, &[u8]); 2] =
        [(None, b"\r\n\r\n"), (Some(b"first-event"), b"first-event")];
    for (send, needle) in steps {
        if let Some(piece) = send {
            tx.send(Ok(bytes::Bytes::from_static(piece))).await.unwrap();
        }
        while !got.windows(needle.len()).any(|w| w == needle) {
            let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
                .await
                .unwrap_or_else(|_| {
                    panic!(
                        "waited 5 s for {:?}; got {:?}",
                        String::from_utf8_lossy(needle),
                        String::from_utf8_lossy(&got)
                    )
                })
                .unwrap();
            assert!(n > 0, "closed early");
            got.extend_from_slice(&buf[..n]);
        }
    }
    let text = String::from_utf8_lossy(&got);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(text.contains("transfer-encoding: chunked"), "{text}");
}

// ---- files are bound to the machine they were given to ----------------------------

/// A config with two machines booting different kernels (and A a cmdline file).
fn two_machines(dir: &std::path::Path, a_kernel: &str) -> Arc<dyn Booter> {
    for name in ["kernel-a", "kernel-a2", "kernel-b", "cfg-a"] {
        std::fs::write(dir.join(name), name).unwrap();
    }
    let text = format!(
        "[[machines]]\nmac = \"52:54:00:00:00:0a\"\nkernel = \"{a_kernel}\"\n\
         cmdline = 'cfg={{{{ URL \"cfg-a\" }}}}'\n\
         [[machines]]\nmac = \"52:54:00:00:00:0b\"\nkernel = \"kernel-b\"\n"
    );
    let cfg = ironpxe_core::Config::parse(
        &text,
        &dir.join("ironpxe.toml"),
        &ironpxe_core::config::NoChecks,
    )
    .unwrap();
    Arc::new(cfg.booter)
}

#[tokio::test]
async fn a_file_url_works_for_its_machine_and_no_other() {
    let d = tempfile::tempdir().unwrap();
    let swap = Arc::new(ironpxe_core::SwapBooter::new(two_machines(
        d.path(),
        "kernel-a",
    )));
    let base = start(swap.clone()).await;
    let (a, b) = (mac("52:54:00:00:00:0a"), mac("52:54:00:00:00:0b"));
    let kernel_a = FileRef::Local(d.path().join("kernel-a"));
    let cfg_a = FileRef::Local(d.path().join("cfg-a"));
    let get = |url: String| async move {
        let r = reqwest::get(&url).await.unwrap();
        (r.status().as_u16(), r.text().await.unwrap())
    };

    // A's script names its kernel with A's MAC; that URL works for A.
    let script = get(urls(&base).script(a, ClientArch::Bios)).await.1;
    let url = urls(&base).file(a, ClientArch::Bios, &kernel_a.id());
    assert!(script.contains(&url), "{script}");
    assert_eq!(get(url).await, (200, "kernel-a".to_string()));
    // So does the file its command line names (the kernel would fetch it).
    let cfg_url = urls(&base).file(a, ClientArch::Bios, &cfg_a.id());
    assert_eq!(get(cfg_url).await.0, 200);

    // B, asking for A's ids under its own MAC, gets what an unknown id gets.
    for id in [kernel_a.id(), cfg_a.id()] {
        let (status, body) = get(urls(&base).file(b, ClientArch::Bios, &id)).await;
        assert_eq!((status, body.as_str()), (404, "unknown file\n"));
    }
    // B's own kernel works for B without a script first (as after a restart).
    let kernel_b = FileRef::Local(d.path().join("kernel-b"));
    assert_eq!(
        get(urls(&base).file(b, ClientArch::EfiX64, &kernel_b.id())).await,
        (200, "kernel-b".to_string())
    );
    // A MAC the booter does not know gets nothing.
    let stranger = mac("52:54:00:00:00:0c");
    assert_eq!(
        get(urls(&base).file(stranger, ClientArch::Bios, &kernel_b.id()))
            .await
            .0,
        404
    );

    // A reload gives A another kernel: the script A is running still works for A.
    swap.swap(two_machines(d.path(), "kernel-a2"));
    let url = urls(&base).file(a, ClientArch::Bios, &kernel_a.id());
    assert_eq!(get(url).await.0, 200);
    assert_eq!(
        get(urls(&base).file(b, ClientArch::Bios, &kernel_a.id()))
            .await
            .0,
        404
    );
}
