use std::io::{Read, Write};
use std::net::TcpListener;
use std::sync::atomic::{AtomicUsize, Ordering};

use super::*;

/// As long as the HTTP script handler lets a booter wait.
const SCRIPT_WAIT: Duration = Duration::from_secs(10);

fn base() -> Url {
    Url::parse("http://api.example/pixie/v1/").unwrap()
}

fn netboot(body: &str) -> (Arc<BootSpec>, Vec<FileRef>) {
    match interpret(body.as_bytes(), &base()) {
        Ok((BootDecision::Netboot(s), files)) => (s, files),
        other => panic!("{body}: {other:?}"),
    }
}

#[test]
fn answers_are_read_and_urls_resolved_against_v1() {
    let (s, files) = netboot(
        r#"{"kernel": "file:///nix/store/k/bzImage", "initrd": ["/initrd.0", "rel/initrd.1", "https://m/x"],
            "cmdline": "init=/nix/store/s/init loglevel=4", "message": "NixOS Automatic Installer for node-01",
            "unknown-key": 1}"#,
    );
    assert_eq!(s.kernel, FileRef::Local("/nix/store/k/bzImage".into()));
    let initrds: Vec<String> = s.initrds.iter().map(ToString::to_string).collect();
    // Relative to <URL>/v1/: "/x" is the host's root and "x" is <URL>/v1/x.
    assert_eq!(
        initrds,
        [
            "http://api.example/initrd.0",
            "http://api.example/pixie/v1/rel/initrd.1",
            "https://m/x"
        ]
    );
    assert_eq!(s.cmdline, "init=/nix/store/s/init loglevel=4");
    assert_eq!(
        s.message.as_deref(),
        Some("NixOS Automatic Installer for node-01")
    );
    assert_eq!(files.len(), 4);

    // No cmdline, null message, no initrd.
    let (s, _) = netboot(r#"{"kernel": "k", "message": null}"#);
    assert_eq!(s.kernel.to_string(), "http://api.example/pixie/v1/k");
    assert!(s.initrds.is_empty());
    assert_eq!(s.cmdline, "");
    assert_eq!(s.message, None);
}

#[test]
fn the_loader_extension_is_read() {
    use ironpxe_core::Loader;
    assert_eq!(netboot(r#"{"kernel": "k"}"#).0.loader, Loader::Ipxe);
    assert_eq!(
        netboot(r#"{"kernel": "k", "loader": "shim"}"#).0.loader,
        Loader::Shim
    );
    assert_eq!(
        netboot(r#"{"kernel": "k", "loader": "grub"}"#).0.loader,
        Loader::Grub
    );
    let e = interpret(br#"{"kernel": "k", "loader": "pxelinux"}"#, &base()).unwrap_err();
    assert_eq!(
        e,
        "loader: unknown loader \"pxelinux\": expected \"ipxe\", \"grub\" or \"shim\""
    );
}

#[test]
fn templated_urls_become_served_files() {
    let (s, files) = netboot(
        r#"{"kernel": "/k", "cmdline": "cfg={{ URL \"/cloud-config\" }} id={{ ID \"file:///srv/x\" }} plain=https://other/y"}"#,
    );
    let cfg = FileRef::parse("http://api.example/cloud-config").unwrap();
    let x = FileRef::Local("/srv/x".into());
    assert_eq!(
        s.cmdline,
        format!(
            "cfg=\0{}\0 id=\0{}\0 plain=https://other/y",
            cfg.id(),
            x.id()
        )
    );
    assert!(files.contains(&cfg) && files.contains(&x));
    let rendered = ironpxe_core::template::render_cmdline(&s.cmdline, &|id| {
        format!("http://10.0.0.2/_/file?name={id}")
    })
    .unwrap();
    assert_eq!(
        rendered,
        format!(
            "cfg=http://10.0.0.2/_/file?name={} id=http://10.0.0.2/_/file?name={} plain=https://other/y",
            cfg.id(),
            x.id()
        )
    );
}

#[test]
fn the_object_cmdline_is_rendered_the_pixiecore_way() {
    let (s, files) = netboot(
        r#"{"kernel": "/k", "cmdline": {"quiet": true, "nomodeset": false, "console": "ttyS0,115200",
            "note": "a \"b\"\\c", "cfg": {"url": "/c.json"}}}"#,
    );
    let cfg = FileRef::parse("http://api.example/c.json").unwrap();
    assert_eq!(
        s.cmdline,
        format!(
            "cfg=\0{}\0 console=\"ttyS0,115200\" nomodeset note=\"a \\\"b\\\"\\\\c\" quiet",
            cfg.id()
        )
    );
    assert!(files.contains(&cfg));
    for (bad, want) in [
        (
            r#"{"kernel": "/k", "cmdline": {"n": 1}}"#,
            "unsupported value kind (a number) for cmdline key \"n\"",
        ),
        (
            r#"{"kernel": "/k", "cmdline": {"c": {"x": 1}}}"#,
            "cmdline key \"c\" has object value with no 'url' attribute",
        ),
        (
            r#"{"kernel": "/k", "cmdline": [1]}"#,
            "cmdline must be a string or an object, not a list",
        ),
    ] {
        assert_eq!(interpret(bad.as_bytes(), &base()).unwrap_err(), want);
    }
}

#[test]
fn bad_answers_are_refused_with_a_reason() {
    let err = |b: &str| interpret(b.as_bytes(), &base()).unwrap_err();
    assert!(err("{").starts_with("invalid JSON answer: "));
    assert!(err(r#"{"kernel": 5}"#).starts_with("invalid JSON answer: "));
    assert_eq!(err(r#"{"initrd": ["/i"]}"#), "the answer has no kernel");
    assert_eq!(
        err(r#"{"kernel": "ftp://x/k"}"#),
        "kernel: \"ftp://x/k\": unsupported URL scheme \"ftp\" (use a local path, file://, http:// or https://)"
    );
    assert_eq!(
        err(r#"{"kernel": "/k", "cmdline": "a\nb"}"#),
        "cmdline contains a line break at byte 1; a kernel command line is one line"
    );
    assert!(err(r#"{"kernel": "/k", "cmdline": "{{ Foo }}"}"#)
        .starts_with("cmdline: cmdline template at byte 3"));
    assert!(
        err(r#"{"kernel": "/k", "cmdline": "a=${x}"}"#).contains("cannot be passed through iPXE")
    );
    assert!(err(r#"{"kernel": "/k", "message": "a\u0000"}"#).contains("NUL"));
    // A message may have line breaks and iPXE syntax: it is printed as written.
    let (s, _) = netboot(r##"{"kernel": "/k", "message": "a\n${b} #c"}"##);
    assert_eq!(s.message.as_deref(), Some("a\n${b} #c"));
    // ipxe-script is served verbatim and wins over everything else.
    match interpret(
        br##"{"kernel": "/k", "ipxe-script": "#!ipxe\nexit 1\n"}"##,
        &base(),
    ) {
        Ok((BootDecision::Script(t), files)) => {
            assert_eq!(&*t, "#!ipxe\nexit 1\n");
            assert!(files.is_empty());
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn source_urls() {
    let Source::Http { base } = Source::parse("http://boot.cluster/api").unwrap() else {
        panic!()
    };
    assert_eq!(base.as_str(), "http://boot.cluster/api/v1/");
    let Source::Http { base } = Source::parse("https://h/").unwrap() else {
        panic!()
    };
    assert_eq!(base.as_str(), "https://h/v1/");
    assert!(Source::parse("ftp://h/")
        .unwrap_err()
        .to_string()
        .contains("unsupported scheme \"ftp\""));
    let d = tempfile::tempdir().unwrap();
    let e = Source::parse(&format!("file://{}", d.path().display())).unwrap_err();
    assert!(e.to_string().contains("no v1/boot directory"), "{e}");
}

fn write_answer(dir: &std::path::Path, name: &str, body: &str) {
    std::fs::create_dir_all(dir.join("v1/boot")).unwrap();
    std::fs::write(dir.join("v1/boot").join(name), body).unwrap();
}

#[test]
fn the_file_tree_is_read_directly() {
    let d = tempfile::tempdir().unwrap();
    write_answer(
        d.path(),
        "52:54:00:00:00:01",
        r#"{"kernel": "file:///nix/store/k/bzImage", "initrd": ["initrd"], "cmdline": "a=b"}"#,
    );
    write_answer(d.path(), "52-54-00-00-00-02", r#"{"kernel": "/k2"}"#);
    write_answer(d.path(), "52:54:00:00:00:03", "not json");
    let src = Source::parse(&format!("file://{}", d.path().display())).unwrap();
    let b = ApiBooter::start(src, Duration::from_secs(1)).unwrap();
    let m = |n| MacAddr([0x52, 0x54, 0, 0, 0, n]);
    let BootDecision::Netboot(s) = b.decide(m(1), ClientArch::Bios, Duration::ZERO) else {
        panic!()
    };
    assert_eq!(s.cmdline, "a=b");
    // Relative to DIR/v1/, like an HTTP API.
    assert_eq!(
        s.initrds[0],
        FileRef::Local(d.path().join("v1/initrd").to_path_buf())
    );
    assert_eq!(b.file(&s.kernel.id()), Some(s.kernel.clone()));
    let BootDecision::Netboot(s2) = b.decide(m(2), ClientArch::Bios, Duration::ZERO) else {
        panic!("dash spelling not found")
    };
    assert_eq!(s2.kernel.to_string(), format!("{}/k2", ""));
    match b.decide(m(3), ClientArch::Bios, Duration::ZERO) {
        BootDecision::Ignore(r) => assert!(r.contains("invalid JSON answer"), "{r}"),
        other => panic!("{other:?}"),
    }
    match b.decide(m(4), ClientArch::Bios, Duration::ZERO) {
        BootDecision::Ignore(r) => assert!(r.contains("no file"), "{r}"),
        other => panic!("{other:?}"),
    }
    // Edits show up at once.
    write_answer(
        d.path(),
        "52:54:00:00:00:01",
        r#"{"kernel": "/k", "cmdline": "changed"}"#,
    );
    let BootDecision::Netboot(s) = b.decide(m(1), ClientArch::Bios, Duration::ZERO) else {
        panic!()
    };
    assert_eq!(s.cmdline, "changed");
}

/// A tiny HTTP API on loopback: `/v1/boot/<mac>` answers from `answers`, after
/// `delay`; counts requests.
struct FakeApi {
    url: String,
    hits: Arc<AtomicUsize>,
}

fn fake_api(answers: Vec<(&'static str, u16, &'static str)>, delay: Duration) -> FakeApi {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/api", l.local_addr().unwrap());
    let hits = Arc::new(AtomicUsize::new(0));
    let h = hits.clone();
    std::thread::spawn(move || {
        for conn in l.incoming() {
            let Ok(mut conn) = conn else { return };
            let answers = answers.clone();
            let h = h.clone();
            std::thread::spawn(move || {
                let mut buf = [0u8; 2048];
                let n = conn.read(&mut buf).unwrap_or(0);
                let req = String::from_utf8_lossy(&buf[..n]).to_string();
                let path = req.split(' ').nth(1).unwrap_or("").to_string();
                h.fetch_add(1, Ordering::SeqCst);
                std::thread::sleep(delay);
                let (status, body) = answers
                    .iter()
                    .find(|(p, _, _)| path.ends_with(p))
                    .map(|(_, s, b)| (*s, *b))
                    .unwrap_or((404, "not found"));
                let _ = write!(
                    conn,
                    "HTTP/1.1 {status} X\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
            });
        }
    });
    FakeApi { url, hits }
}

#[test]
fn a_lookup_is_waited_for_only_as_long_as_the_caller_allows() {
    let api = fake_api(
        vec![(
            "/api/v1/boot/52:54:00:00:00:01",
            200,
            r#"{"kernel": "/k", "cmdline": "x=1"}"#,
        )],
        Duration::from_millis(300),
    );
    let b = ApiBooter::start(Source::parse(&api.url).unwrap(), Duration::from_secs(2)).unwrap();
    let m1 = MacAddr([0x52, 0x54, 0, 0, 0, 1]);
    // Without a wait, a miss starts the lookup and says so...
    assert_eq!(
        b.decide(m1, ClientArch::Bios, Duration::ZERO),
        BootDecision::Pending
    );
    // ...a wait shorter than the API's answer still gets nothing...
    assert_eq!(
        b.decide(m1, ClientArch::Bios, Duration::from_millis(20)),
        BootDecision::Pending
    );
    // ...and a longer one gets the answer of that one lookup in flight...
    let BootDecision::Netboot(s) = b.decide(m1, ClientArch::Bios, SCRIPT_WAIT) else {
        panic!()
    };
    assert_eq!(s.cmdline, "x=1");
    // ...which the next packet reads from the cache, without waiting.
    assert!(matches!(
        b.decide(m1, ClientArch::Bios, Duration::ZERO),
        BootDecision::Netboot(_)
    ));
    assert_eq!(api.hits.load(Ordering::SeqCst), 1);
    // Declined machines are cached too, and the reason is kept.
    let m2 = MacAddr([0x52, 0x54, 0, 0, 0, 2]);
    match b.decide(m2, ClientArch::Bios, SCRIPT_WAIT) {
        BootDecision::Ignore(r) => assert!(r.contains("404"), "{r}"),
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        b.decide(m2, ClientArch::Bios, Duration::ZERO),
        BootDecision::Ignore(_)
    ));
    assert_eq!(api.hits.load(Ordering::SeqCst), 2);
}

/// The first DHCP packet of a machine the API answers at once is answered: the DHCP
/// driver's one-second wait covers the lookup.
#[test]
fn a_fast_api_answers_within_the_dhcp_wait() {
    let api = fake_api(
        vec![(
            "/api/v1/boot/52:54:00:00:00:07",
            200,
            r#"{"kernel": "/k", "cmdline": "fast"}"#,
        )],
        Duration::ZERO,
    );
    let b = ApiBooter::start(Source::parse(&api.url).unwrap(), Duration::from_secs(2)).unwrap();
    let m = MacAddr([0x52, 0x54, 0, 0, 0, 7]);
    assert_eq!(
        b.decide(m, ClientArch::Bios, Duration::ZERO),
        BootDecision::Pending
    );
    let BootDecision::Netboot(s) = b.decide(m, ClientArch::Bios, ironpxe_dhcp::LOOKUP_WAIT) else {
        panic!("no answer within the DHCP lookup wait")
    };
    assert_eq!(s.cmdline, "fast");
}

/// The wait survives every wrapper `ironpxe` puts around a booter: the status
/// observer and the reload swap.
#[test]
fn the_wait_reaches_the_api_through_the_production_wrappers() {
    let api = fake_api(
        vec![(
            "/api/v1/boot/52:54:00:00:00:03",
            200,
            r#"{"kernel": "/k", "cmdline": "wrapped"}"#,
        )],
        Duration::from_millis(200),
    );
    let inner = ApiBooter::start(Source::parse(&api.url).unwrap(), Duration::from_secs(2)).unwrap();
    let status = ironpxe_status::Status::new(ironpxe_status::StoreConfig::default());
    let stack = status.observe_booter(Arc::new(ironpxe_core::SwapBooter::new(Arc::new(inner))));
    let m = MacAddr([0x52, 0x54, 0, 0, 0, 3]);
    let BootDecision::Netboot(s) = stack.decide(m, ClientArch::Bios, SCRIPT_WAIT) else {
        panic!("the wait was lost on the way to the API booter")
    };
    assert_eq!(s.cmdline, "wrapped");
    assert_eq!(api.hits.load(Ordering::SeqCst), 1);
}

#[test]
fn a_slow_api_does_not_stall_anyone_and_times_out() {
    let api = fake_api(vec![], Duration::from_secs(3));
    let b = ApiBooter::start(Source::parse(&api.url).unwrap(), Duration::from_millis(300)).unwrap();
    for n in 0..50 {
        let m = MacAddr([0x52, 0x54, 0, 0, 1, n]);
        assert_eq!(
            b.decide(m, ClientArch::Bios, Duration::ZERO),
            BootDecision::Pending
        );
    }
    // The first of them is among the lookups running; it ends with the timeout.
    // (A machine queued behind all 50 is reached later than its caller waits, since
    // lookups start at most `Limits::rate` a second.)
    match b.decide(
        MacAddr([0x52, 0x54, 0, 0, 1, 0]),
        ClientArch::Bios,
        SCRIPT_WAIT,
    ) {
        BootDecision::Ignore(r) => assert!(r.contains("no answer within the timeout"), "{r}"),
        other => panic!("{other:?}"),
    }
}

/// The flood of the audit, against an API on loopback that takes 500 ms per
/// answer: 400 invented MACs arrive at once. A machine booted before is still
/// answered at once, and a new real machine's retransmit is looked up ahead of the
/// flood, so it is answered within the script wait. (Before, the first 272 invented
/// MACs filled the queue, the real machine's first packet found it full, and its
/// retransmit queued behind them.)
#[test]
fn a_flood_of_invented_macs_does_not_lock_out_a_new_machine() {
    let api = fake_api(
        vec![
            (
                "/api/v1/boot/52:54:00:00:00:0a",
                200,
                r#"{"kernel": "/k", "cmdline": "real"}"#,
            ),
            (
                "/api/v1/boot/52:54:00:00:00:0b",
                200,
                r#"{"kernel": "/k", "cmdline": "cached"}"#,
            ),
        ],
        Duration::from_millis(500),
    );
    let b = ApiBooter::start(Source::parse(&api.url).unwrap(), Duration::from_secs(2)).unwrap();
    let real = MacAddr([0x52, 0x54, 0, 0, 0, 0x0a]);
    let cached = MacAddr([0x52, 0x54, 0, 0, 0, 0x0b]);
    let cmdline = |d: BootDecision| match d {
        BootDecision::Netboot(s) => s.cmdline.clone(),
        other => panic!("{other:?}"),
    };
    assert_eq!(
        cmdline(b.decide(cached, ClientArch::Bios, SCRIPT_WAIT)),
        "cached"
    );
    let t0 = Instant::now();
    for n in 0..400u16 {
        let [hi, lo] = n.to_be_bytes();
        b.decide(
            MacAddr([0x02, 0xf1, 0, 0, hi, lo]),
            ClientArch::Bios,
            Duration::ZERO,
        );
    }
    assert_eq!(
        cmdline(b.decide(cached, ClientArch::Bios, Duration::ZERO)),
        "cached"
    );
    // The real machine's first DISCOVER is one among the flood...
    assert_eq!(
        b.decide(real, ClientArch::Bios, Duration::ZERO),
        BootDecision::Pending
    );
    // ...its retransmit is a retry, looked up ahead of every invented MAC.
    std::thread::sleep(Duration::from_millis(2100)); // past lookups::REPEAT_GAP
    match b.decide(real, ClientArch::Bios, SCRIPT_WAIT) {
        BootDecision::Netboot(s) => assert_eq!(s.cmdline, "real"),
        other => panic!("the new machine was not answered: {other:?}"),
    }
    assert_eq!(
        cmdline(b.decide(cached, ClientArch::Bios, Duration::ZERO)),
        "cached"
    );
    // The API was asked at most 20 times a second (after a burst of 20), not once
    // per invented MAC.
    let hits = api.hits.load(Ordering::SeqCst) - 1;
    let bound = 20 + (20.0 * t0.elapsed().as_secs_f64()).ceil() as usize;
    assert!(
        hits <= bound,
        "{hits} API requests, at most {bound} allowed"
    );
}

/// The restart story: a new booter (a restarted ironpxe) does not know the ids, and
/// knows them again, the same ids, once the machine's script is asked for again.
#[test]
fn file_ids_survive_a_restart_once_the_machine_is_looked_up_again() {
    let api = fake_api(
        vec![(
            "/api/v1/boot/52:54:00:00:00:01",
            200,
            r#"{"kernel": "http://files/k", "initrd": ["/i"], "cmdline": "c={{ URL \"/c\" }}"}"#,
        )],
        Duration::ZERO,
    );
    let m1 = MacAddr([0x52, 0x54, 0, 0, 0, 1]);
    let first = ApiBooter::start(Source::parse(&api.url).unwrap(), Duration::from_secs(2)).unwrap();
    let BootDecision::Netboot(s) = first.decide(m1, ClientArch::Bios, SCRIPT_WAIT) else {
        panic!()
    };
    let ids: Vec<FileId> = s.files().map(FileRef::id).collect();
    let c_id = FileRef::parse(&format!("{}/c", api.url.trim_end_matches("/api")))
        .unwrap()
        .id();
    assert!(first.file(&c_id).is_some());
    drop(first);

    let restarted =
        ApiBooter::start(Source::parse(&api.url).unwrap(), Duration::from_secs(2)).unwrap();
    assert!(ids.iter().all(|id| restarted.file(id).is_none()));
    assert!(matches!(
        restarted.decide(m1, ClientArch::Bios, SCRIPT_WAIT),
        BootDecision::Netboot(_)
    ));
    for id in ids.iter().chain([&c_id]) {
        assert!(
            restarted.file(id).is_some(),
            "{id} unknown after the lookup"
        );
    }
}

#[test]
fn file_memory_is_bounded_and_keeps_recent_files() {
    let mut m = FileMemory::default();
    let f = |i: usize| FileRef::Local(format!("/f/{i}").into());
    m.remember(f(0));
    for i in 1..MAX_FILES + 50 {
        m.remember(f(i));
        if i % 100 == 0 {
            assert!(
                m.get(&f(0).id()).is_some(),
                "recently used file forgotten at {i}"
            );
        }
    }
    assert!(m.files.len() <= MAX_FILES);
    assert!(m.get(&f(0).id()).is_some());
    assert!(m.get(&f(1).id()).is_none());
    assert!(m.get(&f(MAX_FILES + 49).id()).is_some());
}

#[test]
fn go_quoting() {
    assert_eq!(go_quote("a b"), "\"a b\"");
    assert_eq!(go_quote("q\"\\\n\t\u{1}é"), "\"q\\\"\\\\\\n\\t\\x01é\"");
}

#[test]
fn file_tree_answers_must_be_small_regular_files() {
    let d = tempfile::tempdir().unwrap();
    write_answer(
        d.path(),
        "52:54:00:00:00:01",
        &" ".repeat(MAX_ANSWER_BYTES + 1),
    );
    let fifo = d.path().join("v1/boot/52:54:00:00:00:02");
    let made = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap();
    assert!(made.success());
    let src = Source::parse(&format!("file://{}", d.path().display())).unwrap();
    let b = ApiBooter::start(src, Duration::from_secs(1)).unwrap();
    let m = |n| MacAddr([0x52, 0x54, 0, 0, 0, n]);
    // Neither hangs nor is booted.
    for n in [1, 2] {
        assert!(
            matches!(
                b.decide(m(n), ClientArch::Bios, Duration::ZERO),
                BootDecision::Ignore(_)
            ),
            "machine {n} was answered"
        );
    }
}

/// The fuzzer's seeds in `testdata/api/`: `bad-*` answers are refused with a reason,
/// every other one boots, and every file its script names is one the answer lets
/// ironpxe serve.
#[test]
fn testdata_answers_translate_as_their_names_say() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../testdata/api");
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        let body = std::fs::read(&path).unwrap();
        n += 1;
        let got = interpret_answer(&body, &base());
        if name.starts_with("bad-") {
            let e = got.expect_err(&name);
            assert!(!e.is_empty() && !e.contains('\n'), "{name}: {e:?}");
            continue;
        }
        match got {
            Ok((BootDecision::Netboot(s), files)) => {
                assert!(files.contains(&s.kernel), "{name}");
                assert!(s.initrds.iter().all(|i| files.contains(i)), "{name}");
                let named = std::cell::RefCell::new(Vec::new());
                ironpxe_core::template::render_cmdline(&s.cmdline, &|id| {
                    named.borrow_mut().push(id.clone());
                    String::new()
                })
                .unwrap();
                for id in named.into_inner() {
                    assert!(files.iter().any(|f| f.id() == id), "{name}: {id}");
                }
            }
            Ok((BootDecision::Script(_), files)) => assert!(files.is_empty(), "{name}"),
            other => panic!("{name}: {other:?}"),
        }
    }
    assert!(n >= 10, "{n} answers in {}", dir.display());
}
