//! The connection driver's limits on a real 127.0.0.1 socket, each with short
//! timeouts set through [`HttpLimits`]: a connection that sends nothing, a slow
//! head, an idle kept-alive connection, a client that stops reading, a slow client
//! that keeps reading, and the connection caps with a second source address
//! (127.0.0.2).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, Once};
use std::time::{Duration, Instant};

use ironpxe_core::{BootSpec, BootUrls, Booter, FileRef, StaticBooter};
use ironpxe_http::{router, serve_with, HttpLimits, HttpState};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};

// ---- capture of `ironpxe::event` events --------------------------------------

type Fields = HashMap<String, String>;
static EVENTS: Mutex<Vec<Fields>> = Mutex::new(Vec::new());

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

/// The events named `name` about file `id` so far.
fn events_about(name: &str, id: &str) -> Vec<Fields> {
    EVENTS
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .iter()
        .filter(|f| {
            f.get("event").map(String::as_str) == Some(name)
                && f.get("id").map(String::as_str) == Some(id)
        })
        .cloned()
        .collect()
}

/// Waits up to `within` for an event named `name` about file `id`.
async fn wait_event(name: &str, id: &str, within: Duration) -> Option<Fields> {
    let deadline = Instant::now() + within;
    loop {
        if let Some(f) = events_about(name, id).pop() {
            return Some(f);
        }
        if Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

// ---- servers and fixtures -----------------------------------------------------

/// Limits with every timeout long, so a test shortens only the one it is about.
fn long() -> HttpLimits {
    HttpLimits {
        head_timeout: Duration::from_secs(300),
        idle_timeout: Duration::from_secs(300),
        send_stall: Duration::from_secs(300),
        max_connections: 8192,
        max_connections_per_addr: 8192,
    }
}

/// A sparse file of `size` bytes served as the kernel; returns the server's
/// address and the file's request path.
async fn start(size: u64, limits: HttpLimits) -> (tempfile::TempDir, SocketAddr, String, FileRef) {
    capture_events();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("initrd");
    std::fs::File::create(&path).unwrap().set_len(size).unwrap();
    let kernel = FileRef::Local(path);
    let booter: Arc<dyn Booter> = Arc::new(StaticBooter::new(BootSpec {
        kernel: kernel.clone(),
        initrds: vec![],
        cmdline: String::new(),
        message: None,
        loader: Default::default(),
    }));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(serve_with(
        listener,
        router(HttpState::new(booter).unwrap()),
        std::future::pending(),
        Duration::from_secs(1),
        limits,
    ));
    let url = BootUrls::http(addr.ip(), addr.port()).file(
        "52:54:00:12:34:56".parse().unwrap(),
        ironpxe_core::ClientArch::Bios,
        &kernel.id(),
    );
    let target = url.split_once(&addr.to_string()).unwrap().1.to_string();
    (dir, addr, target, kernel)
}

/// Makes sure this process may open `n` descriptors, or fails naming the limit.
fn need_open_files(n: u64) {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).unwrap();
    if soft < n {
        assert!(
            hard >= n,
            "this test needs {n} open files; the hard limit is {hard} (raise it with ulimit -Hn)"
        );
        setrlimit(Resource::RLIMIT_NOFILE, hard, hard).unwrap();
    }
}

/// A connection from `source` (an address of the loopback interface) to `addr`.
async fn connect_from(source: &str, addr: SocketAddr) -> TcpStream {
    let s = TcpSocket::new_v4().unwrap();
    s.bind(format!("{source}:0").parse().unwrap()).unwrap();
    s.connect(addr).await.unwrap()
}

/// Whether the server has closed `s` (EOF or reset), waiting up to `within`. Any
/// bytes it sent first are returned too.
async fn closed_within(s: &mut TcpStream, within: Duration) -> (bool, Vec<u8>) {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match tokio::time::timeout_at(deadline, s.read(&mut buf)).await {
            Err(_) => return (false, got),
            Ok(Ok(0)) | Ok(Err(_)) => return (true, got),
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
        }
    }
}

/// Reads a response head; returns it and the body bytes read with it.
async fn read_head(s: &mut TcpStream) -> (String, Vec<u8>) {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        if let Some(i) = got.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&got[..i + 4]).into_owned();
            return (head, got[i + 4..].to_vec());
        }
        let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf))
            .await
            .expect("no response head within 10 s")
            .unwrap();
        assert!(n > 0, "closed before a response head: {got:?}");
        got.extend_from_slice(&buf[..n]);
    }
}

/// Reads the rest of a body of `len` bytes whose start is `first`.
async fn read_body(s: &mut TcpStream, mut first: Vec<u8>, len: u64) -> Vec<u8> {
    let mut buf = [0u8; 4096];
    while (first.len() as u64) < len {
        let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf))
            .await
            .expect("no body within 10 s")
            .unwrap();
        assert!(n > 0, "closed inside a body");
        first.extend_from_slice(&buf[..n]);
    }
    first
}

fn content_length(head: &str) -> u64 {
    head.lines()
        .find_map(|l| l.strip_prefix("content-length: "))
        .expect("no content-length")
        .trim()
        .parse()
        .unwrap()
}

// ---- timeouts -----------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_thousand_half_open_connections_are_closed_after_the_head_timeout() {
    const N: usize = 3000;
    need_open_files(3 * N as u64 + 512);
    let (_d, addr, _, _) = start(
        1,
        HttpLimits {
            head_timeout: Duration::from_secs(1),
            ..long()
        },
    )
    .await;
    let mut conns = Vec::with_capacity(N);
    for _ in 0..N {
        conns.push(TcpStream::connect(addr).await.unwrap());
    }
    // Each one sends nothing; every one must be closed long before the idle timeout.
    let waits = conns.into_iter().map(|mut s| {
        tokio::spawn(async move { closed_within(&mut s, Duration::from_secs(30)).await.0 })
    });
    let waits: Vec<_> = waits.collect();
    let mut open = 0;
    for w in waits {
        if !w.await.unwrap() {
            open += 1;
        }
    }
    assert_eq!(
        open, 0,
        "{open} of {N} silent connections still open after 30 s"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_head_is_answered_408_on_new_and_kept_alive_connections() {
    let (_d, addr, target, _) = start(
        10,
        HttpLimits {
            head_timeout: Duration::from_secs(1),
            ..long()
        },
    )
    .await;
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n").await.unwrap();
    let (closed, got) = closed_within(&mut s, Duration::from_secs(20)).await;
    assert!(closed, "a half-sent head kept its connection for 20 s");
    assert!(got.starts_with(b"HTTP/1.1 408"), "{got:?}");

    // A kept-alive connection: the second head starts its own clock.
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(format!("GET {target} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let (head, first) = read_head(&mut s).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert_eq!(read_body(&mut s, first, 10).await.len(), 10);
    s.write_all(b"GET / HTTP/1.1\r\n").await.unwrap();
    let (closed, got) = closed_within(&mut s, Duration::from_secs(20)).await;
    assert!(
        closed,
        "a half-sent second head kept its connection for 20 s"
    );
    assert!(got.starts_with(b"HTTP/1.1 408"), "{got:?}");

    // The start of the second head arrives with the first request.
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(format!("GET {target} HTTP/1.1\r\nHost: x\r\n\r\nGET / HTTP/1.1\r\n").as_bytes())
        .await
        .unwrap();
    let (head, first) = read_head(&mut s).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let first = read_body(&mut s, first, 10).await;
    let (closed, got) = closed_within(&mut s, Duration::from_secs(20)).await;
    assert!(closed, "a pipelined half head kept its connection for 20 s");
    let got = [&first[10..], &got[..]].concat();
    assert!(got.starts_with(b"HTTP/1.1 408"), "{got:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_idle_kept_alive_connections_are_closed_after_the_idle_timeout() {
    let (_d, addr, target, _) = start(
        10,
        HttpLimits {
            idle_timeout: Duration::from_secs(1),
            ..long()
        },
    )
    .await;
    let mut conns = Vec::new();
    for _ in 0..50 {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(format!("GET {target} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
            .await
            .unwrap();
        let (head, first) = read_head(&mut s).await;
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        assert!(!head.contains("connection: close"), "{head}");
        assert_eq!(read_body(&mut s, first, 10).await.len(), 10);
        conns.push(s);
    }
    let waits = conns.into_iter().map(|mut s| {
        tokio::spawn(async move { closed_within(&mut s, Duration::from_secs(30)).await })
    });
    let waits: Vec<_> = waits.collect();
    for w in waits {
        let (closed, got) = w.await.unwrap();
        assert!(
            closed,
            "an idle kept-alive connection is still open after 30 s"
        );
        assert!(got.is_empty(), "an idle connection got {got:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_is_cut_after_the_send_stall() {
    let (_d, addr, target, kernel) = start(
        1 << 30,
        HttpLimits {
            send_stall: Duration::from_secs(1),
            ..long()
        },
    )
    .await;
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(format!("GET {target} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let (head, _) = read_head(&mut s).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    // From here on nothing is read: the buffers fill and the window shuts.
    let failed = wait_event(
        "http.file.failed",
        kernel.id().as_str(),
        Duration::from_secs(60),
    )
    .await
    .expect("a client that reads nothing was not given up within 60 s");
    assert!(failed["reason"].contains("went away"), "{failed:?}");
    drop(s);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_but_progressing_download_is_never_cut() {
    const SIZE: u64 = 48 << 20;
    let stall = Duration::from_secs(1);
    let (_d, addr, target, kernel) = start(
        SIZE,
        HttpLimits {
            send_stall: stall,
            ..long()
        },
    )
    .await;
    // A small receive window, read one window's worth every 100 ms for six stall
    // limits: the server sees its writes blocked for seconds at a time, yet the
    // client never stops taking data.
    let sock = TcpSocket::new_v4().unwrap();
    sock.set_recv_buffer_size(64 * 1024).unwrap();
    let mut s = sock.connect(addr).await.unwrap();
    s.write_all(format!("GET {target} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let (head, first) = read_head(&mut s).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert_eq!(content_length(&head), SIZE);
    let mut total = first.len() as u64;
    let mut buf = vec![0u8; 64 * 1024];
    let slow_until = Instant::now() + 6 * stall;
    while Instant::now() < slow_until {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf))
            .await
            .expect("no data within 10 s")
            .unwrap();
        assert!(
            n > 0,
            "the server closed a slow download after {total} bytes"
        );
        total += n as u64;
    }
    assert!(
        total < SIZE / 2,
        "the slow phase already read {total} of {SIZE} bytes: the test proves nothing"
    );
    assert!(
        events_about("http.file.failed", kernel.id().as_str()).is_empty(),
        "a progressing download was given up"
    );
    // Then at full speed to the end.
    loop {
        let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf))
            .await
            .expect("no data within 10 s")
            .unwrap();
        assert!(n > 0, "the server closed after {total} of {SIZE} bytes");
        total += n as u64;
        if total >= SIZE {
            break;
        }
    }
    assert_eq!(total, SIZE);
    wait_event(
        "http.file.done",
        kernel.id().as_str(),
        Duration::from_secs(10),
    )
    .await
    .expect("no http.file.done");
}

// ---- connection caps ------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_address_cannot_take_the_connections_another_needs() {
    const N: usize = 3000;
    need_open_files(2 * N as u64 + 512);
    let (_d, addr, target, _) = start(
        1 << 20,
        HttpLimits {
            max_connections: 64,
            max_connections_per_addr: 8,
            ..long()
        },
    )
    .await;
    // One address opens 3,000 connections and sends nothing on any of them.
    let mut held = Vec::with_capacity(N);
    for _ in 0..N {
        held.push(TcpStream::connect(addr).await.unwrap());
    }
    // Those over its share are answered 503 and closed at once, unread.
    let waits = held.into_iter().map(|mut s| {
        tokio::spawn(async move {
            let (closed, got) = closed_within(&mut s, Duration::from_secs(3)).await;
            (closed, got, s)
        })
    });
    let waits: Vec<_> = waits.collect();
    let (mut refused, mut busy, mut kept) = (0, 0, Vec::new());
    for w in waits {
        let (closed, got, s) = w.await.unwrap();
        if closed {
            refused += 1;
            if got.starts_with(b"HTTP/1.1 503") {
                busy += 1;
            }
        } else {
            kept.push(s);
        }
    }
    // Another address still downloads, while the first holds what it got.
    let mut s = connect_from("127.0.0.2", addr).await;
    s.write_all(
        format!("GET {target} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await
    .unwrap();
    let (head, first) = read_head(&mut s).await;
    assert!(
        head.starts_with("HTTP/1.1 200"),
        "127.0.0.2 could not download while 127.0.0.1 holds {} connections: {head}",
        kept.len()
    );
    let mut rest = Vec::new();
    s.read_to_end(&mut rest).await.unwrap();
    assert_eq!(first.len() + rest.len(), 1 << 20);
    assert!(
        kept.len() <= 32,
        "one address holds {} connections; its share ends at half the cap (32)",
        kept.len()
    );
    assert!(refused >= N - 32, "only {refused} of {N} were refused");
    assert!(busy > 0, "no refused connection read a 503");

    drop(kept);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_over_the_cap_get_503_and_free_slots_are_reused() {
    let (_d, addr, target, _) = start(
        100,
        HttpLimits {
            max_connections: 4,
            max_connections_per_addr: 4,
            ..long()
        },
    )
    .await;
    let mut held = Vec::new();
    for _ in 0..4 {
        held.push(TcpStream::connect(addr).await.unwrap());
    }
    // Let the server accept them before the fifth arrives.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut over = TcpStream::connect(addr).await.unwrap();
    let (closed, got) = closed_within(&mut over, Duration::from_secs(5)).await;
    assert!(closed, "a connection over the cap was kept");
    assert!(got.starts_with(b"HTTP/1.1 503"), "{got:?}");
    // Closing one frees its slot.
    drop(held.pop());
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(format!("GET {target} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let (head, _) = read_head(&mut s).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
}

#[test]
fn default_caps_follow_the_open_file_limit() {
    let small = HttpLimits::for_open_files(1024);
    assert_eq!(
        (small.max_connections, small.max_connections_per_addr),
        (256, 8)
    );
    let large = HttpLimits::for_open_files(524_288);
    assert_eq!(
        (large.max_connections, large.max_connections_per_addr),
        (16_384, 512)
    );
    let tiny = HttpLimits::for_open_files(20);
    assert_eq!(tiny.max_connections, 64);
}
