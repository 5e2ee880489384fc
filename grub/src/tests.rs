use std::sync::Arc;

use ironpxe_core::loader::{GrubPath, GrubStep};
use ironpxe_core::{BootSpec, EfiCpu, FileRef, Loader, MacAddr, StaticBooter};
use ironpxe_tftp::{FileSource, OpenError};

use crate::render::{self, Answer, Field, GrubError, MachineConfig};
use crate::sim;
use crate::GrubFiles;

const MAC: MacAddr = MacAddr([0x52, 0x54, 0x00, 0x12, 0x34, 0x56]);

/// GRUB's variables after netbooting from 10.0.0.2 over TFTP.
const TFTP_VARS: &[(&str, &str)] = &[
    ("net_default_mac", "52:54:00:12:34:56"),
    ("net_default_server", "10.0.0.2"),
    ("grub_cpu", "x86_64"),
];

fn spec(cmdline: &str, message: Option<&str>) -> BootSpec {
    BootSpec {
        kernel: FileRef::parse("/srv/boot/vmlinuz").unwrap(),
        initrds: vec![
            FileRef::parse("/srv/boot/initrd.img").unwrap(),
            FileRef::parse("http://mirror.example/nix/store-initrd").unwrap(),
        ],
        cmdline: cmdline.into(),
        message: message.map(Into::into),
        loader: Loader::Shim,
    }
}

fn render(spec: &BootSpec) -> Result<String, GrubError> {
    render::machine_config(&MachineConfig {
        mac: MAC,
        cpu: EfiCpu::X64,
        answer: Answer::Boot(spec),
        http_port: 8080,
    })
}

fn kernel_path(spec: &BootSpec) -> String {
    format!(
        "/{}",
        GrubPath::File {
            mac: MAC,
            step: GrubStep::Kernel {
                initrds: spec.initrds.len()
            },
            id: spec.kernel.id(),
            name: spec.kernel.file_name("kernel"),
        }
        .to_path()
    )
}

/// Renders `cmdline`, runs the configuration in the GRUB model and returns what the
/// kernel receives, without GRUB's own `BOOT_IMAGE=<path> ` first word.
fn kernel_sees(cmdline: &str) -> String {
    let s = spec(cmdline, None);
    let cfg = render(&s).unwrap();
    let run = sim::run(&cfg, TFTP_VARS).unwrap_or_else(|e| panic!("{e}:\n{cfg}"));
    assert!(run.booted, "did not boot:\n{cfg}");
    let (file, line) = run.linux.unwrap();
    assert_eq!(file, kernel_path(&s));
    let prefix = format!("BOOT_IMAGE={file}");
    let rest = line.strip_prefix(&prefix).expect("BOOT_IMAGE first");
    match rest.strip_prefix(' ') {
        Some(r) => r.to_string(),
        None => {
            assert!(rest.is_empty(), "{line:?}");
            String::new()
        }
    }
}

fn assert_passes(cmdline: &str) {
    assert_eq!(
        kernel_sees(cmdline),
        cmdline,
        "cmdline {cmdline:?} was altered"
    );
}

fn refused(cmdline: &str) -> GrubError {
    render(&spec(cmdline, None)).unwrap_err()
}

fn console_shows(message: &str) -> Vec<String> {
    let cfg = render(&spec("quiet", Some(message))).unwrap();
    let run = sim::run(&cfg, TFTP_VARS).unwrap_or_else(|e| panic!("{e}:\n{cfg}"));
    assert!(run.booted);
    // The last echo is ironpxe's own "loading" line.
    let mut e = run.echoes;
    assert!(e
        .pop()
        .unwrap()
        .starts_with("ironpxe: 52:54:00:12:34:56: loading"));
    e
}

#[test]
fn the_dispatcher_sources_the_machines_own_file() {
    let d = render::dispatch_config();
    for (mac, cpu) in [
        (MAC, EfiCpu::X64),
        (MacAddr([2, 0, 0, 0, 0xab, 0xcd]), EfiCpu::Arm64),
    ] {
        let vars = [
            ("net_default_mac", mac.to_string()),
            ("grub_cpu", cpu.grub_cpu().to_string()),
        ];
        let vars: Vec<(&str, &str)> = vars.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let run = sim::run(&d, &vars).unwrap();
        assert_eq!(run.sourced.len(), 1, "{d}");
        // The file it sources is the one ironpxe serves for that machine.
        assert_eq!(
            GrubPath::parse(&run.sourced[0]),
            Some(GrubPath::Machine { mac, cpu })
        );
        // Reaching the end means the file could not be loaded: it says so and exits.
        assert!(run.exited);
        assert_eq!(
            run.echoes,
            [format!(
                "ironpxe: no configuration could be loaded for {mac}; trying the next boot device"
            )]
        );
    }
}

#[test]
fn a_machine_config_echoes_loads_and_boots() {
    let s = spec("console=ttyS0 root=/dev/sda1", Some("Installing node03"));
    let cfg = render(&s).unwrap();
    let run = sim::run(&cfg, TFTP_VARS).unwrap();
    assert!(run.booted && !run.exited);
    assert_eq!(
        run.echoes,
        [
            "Installing node03",
            "ironpxe: 52:54:00:12:34:56: loading vmlinuz and 2 initrds"
        ]
    );
    let (file, line) = run.linux.unwrap();
    assert_eq!(
        line,
        format!("BOOT_IMAGE={file} console=ttyS0 root=/dev/sda1")
    );
    // Every file is a path ironpxe serves, and the last initrd is the last file.
    let parsed: Vec<GrubPath> = std::iter::once(&file)
        .chain(&run.initrds)
        .map(|p| GrubPath::parse(p).unwrap_or_else(|| panic!("{p}")))
        .collect();
    let ids: Vec<_> = s.files().map(FileRef::id).collect();
    for (p, id) in parsed.iter().zip(&ids) {
        let GrubPath::File { mac, id: got, .. } = p else {
            panic!("{p:?}")
        };
        assert_eq!((*mac, got), (MAC, id));
    }
    assert_eq!(
        parsed.iter().map(GrubPath::is_last).collect::<Vec<_>>(),
        [false, false, true]
    );
    assert!(cfg.contains("initrd1of2") && cfg.contains("initrd2of2"));
}

#[test]
fn a_kernel_alone_is_the_last_file() {
    let mut s = spec("x", None);
    s.initrds.clear();
    let cfg = render(&s).unwrap();
    let run = sim::run(&cfg, TFTP_VARS).unwrap();
    assert!(run.booted && run.initrds.is_empty());
    assert!(GrubPath::parse(&run.linux.unwrap().0).unwrap().is_last());
    assert!(!cfg.contains("initrd "));
}

#[test]
fn failures_retry_then_exit_to_the_next_boot_device() {
    let cfg = render(&spec("x", None)).unwrap();
    assert!(cfg.contains("for ironpxe_attempt in 1 2 3; do\n  if linux "));
    assert!(cfg.contains("  sleep 5\ndone\n"));
    assert!(cfg.ends_with(
        "echo -- 'ironpxe: 52:54:00:12:34:56: could not load the kernel and initrds; trying the next boot device'\nsleep 5\nexit\n"
    ));
}

#[test]
fn local_and_unknown_machines_exit_to_the_next_boot_device() {
    let local = render::machine_config(&MachineConfig {
        mac: MAC,
        cpu: EfiCpu::Arm64,
        answer: Answer::Local,
        http_port: 80,
    })
    .unwrap();
    let run = sim::run(&local, &[]).unwrap();
    assert!(run.exited && run.linux.is_none());
    assert_eq!(
        run.echoes,
        ["ironpxe: 52:54:00:12:34:56 boots from its next boot device"]
    );
    let none = render::machine_config(&MachineConfig {
        mac: MAC,
        cpu: EfiCpu::X64,
        answer: Answer::NotBooted("not in the config, and it's\nnot \"known\" ${x}"),
        http_port: 80,
    })
    .unwrap();
    let run = sim::run(&none, &[]).unwrap();
    assert!(run.exited && run.linux.is_none() && !run.booted);
    assert_eq!(
        run.echoes,
        ["ironpxe: 52:54:00:12:34:56 has no boot configuration (not in the config, and it's not \"known\" ${x}); trying the next boot device"]
    );
}

// The hostile strings of the iPXE renderer's tests, through GRUB.

#[test]
fn dollar_and_braces_pass() {
    assert_passes("a=$HOME b=$ c=$$");
    assert_passes("x=${y} ${ironpxe_host} ${net_default_mac}");
    assert_passes("${ ${ }}");
    assert_passes("}{ {} }x=$}{");
}

#[test]
fn hash_semicolons_and_separators_pass() {
    assert_passes("# not a comment");
    assert_passes("a #b c#d");
    assert_passes("a || b && c ; d");
    assert_passes("a;b|c&d<e>f");
    assert_passes("nixos.install=/dev/sda init=/nix/store/abc-init --help -n -- x");
}

#[test]
fn spaces_pass_exactly() {
    assert_passes("a  b");
    assert_passes("  leading and trailing  ");
    assert_passes(" ");
    assert_passes("tab\there\x0bvt\x0cff");
    assert_passes("");
    assert_passes("hostname=nœud-3 motd=✓");
}

#[test]
fn quotes_and_backslashes_are_refused() {
    // GRUB would hand the kernel `a=\"b` for `a="b`.
    for (text, ch, offset) in [
        (r#"a="b c""#, '"', 2),
        ("d='e  f'", '\'', 2),
        (r"g=\", '\\', 2),
    ] {
        match refused(text) {
            GrubError::Unrepresentable {
                field: Field::Cmdline,
                ch: c,
                offset: o,
                reason,
            } => {
                assert_eq!((c, o), (ch, offset), "{text:?}");
                assert!(reason.contains("loader \"ipxe\""), "{reason}");
            }
            other => panic!("{text:?}: {other:?}"),
        }
    }
    assert!(refused(r#"a="b""#)
        .to_string()
        .starts_with("cmdline: '\"' at byte 2 cannot be passed through GRUB"));
}

#[test]
fn line_breaks_and_nul_are_refused() {
    for (text, ch, offset) in [("a\nb", '\n', 1), ("ab\r", '\r', 2), ("a\0", '\0', 1)] {
        match refused(text) {
            GrubError::Unrepresentable {
                field: Field::Cmdline,
                ch: c,
                offset: o,
                ..
            } => assert_eq!((c, o), (ch, offset), "{text:?}"),
            other => panic!("{text:?}: {other:?}"),
        }
    }
    assert!(refused("a\nb").to_string().contains("single line"));
}

#[test]
fn messages_pass_everything_but_nul() {
    for (msg, lines) in [
        ("Installing node03", vec!["Installing node03"]),
        ("-n starts like an option", vec!["-n starts like an option"]),
        ("--", vec!["--"]),
        (
            "cost: $5 ${HOME} ${a}${b} $${x} {y}",
            vec!["cost: $5 ${HOME} ${a}${b} $${x} {y}"],
        ),
        (
            "# || && ; = \"quoted\" 'single' back\\slash",
            vec!["# || && ; = \"quoted\" 'single' back\\slash"],
        ),
        ("two  spaces\tand tab", vec!["two  spaces\tand tab"]),
        ("line one\nline two\n", vec!["line one", "line two"]),
        ("crlf\r\nend", vec!["crlf", "end"]),
    ] {
        assert_eq!(console_shows(msg), lines, "{msg:?}");
    }
    let e = render(&spec("", Some("a\0b"))).unwrap_err();
    assert!(matches!(
        e,
        GrubError::Unrepresentable {
            field: Field::Message,
            ch: '\0',
            offset: 1,
            ..
        }
    ));
}

#[test]
fn file_urls_name_the_server_grub_fetches_from() {
    let extra = FileRef::parse("/srv/cloud-init.yaml").unwrap();
    let marker = ironpxe_core::template::file_marker(&extra.id());
    let s = spec(&format!("ds=nocloud-net;s={marker} quiet"), None);
    let cfg = render(&s).unwrap();
    // Bound to the machine, as every file URL ironpxe hands out.
    let url = format!(
        "http://10.0.0.2:8080/_/file?name={}&mac={MAC}&arch=7",
        extra.id()
    );
    for server in ["10.0.0.2", "10.0.0.2:8080"] {
        let vars = [("net_default_server", server)];
        let run = sim::run(&cfg, &vars).unwrap();
        let (file, line) = run.linux.unwrap();
        assert_eq!(
            line,
            format!("BOOT_IMAGE={file} ds=nocloud-net;s={url} quiet"),
            "{server}"
        );
    }
    // A quote next to a file URL is still refused, at its offset in the user's text.
    let s = spec(&format!("a={marker}\""), None);
    match render(&s).unwrap_err() {
        GrubError::Unrepresentable {
            ch: '"', offset, ..
        } => {
            assert_eq!(
                offset,
                2 + format!("http://server/_/file?name={}", extra.id()).len()
            )
        }
        other => panic!("{other:?}"),
    }
}

/// The rule, stated apart from the code: a cmdline is refused iff it holds a quote,
/// a backslash, a line break or NUL.
fn representable(text: &str) -> bool {
    !text.contains(['"', '\'', '\\', '\n', '\r', '\0'])
}

#[test]
fn every_short_cmdline_passes_or_is_refused_correctly() {
    let alphabet = ['$', '{', '}', ' ', '#', ';', '|', '"', '\'', '\\', 'a'];
    let mut texts = vec![String::new()];
    let mut frontier = vec![String::new()];
    for _ in 0..4 {
        let mut next = Vec::new();
        for t in &frontier {
            for c in alphabet {
                let mut u = t.clone();
                u.push(c);
                next.push(u);
            }
        }
        texts.extend(next.iter().cloned());
        frontier = next;
    }
    assert!(texts.len() > 16_000);
    for t in &texts {
        match render(&spec(t, Some(t))) {
            Ok(cfg) => {
                assert!(
                    representable(t),
                    "{t:?} was rendered but GRUB would alter it"
                );
                let run = sim::run(&cfg, TFTP_VARS).unwrap_or_else(|e| panic!("{t:?}: {e}\n{cfg}"));
                let (file, line) = run.linux.unwrap();
                let expected = if t.is_empty() {
                    format!("BOOT_IMAGE={file}")
                } else {
                    format!("BOOT_IMAGE={file} {t}")
                };
                assert_eq!(line, expected, "{t:?}");
                assert_eq!(run.echoes[0], *t, "message {t:?}");
            }
            Err(e) => assert!(!representable(t), "{t:?} refused: {e}"),
        }
    }
}

// The files GRUB fetches.

fn files_for(spec: BootSpec) -> GrubFiles {
    GrubFiles::new(Arc::new(StaticBooter::new(spec)), 8080)
}

/// Every byte of `c`, read as a transfer reads it.
fn bytes_of(c: ironpxe_tftp::Content) -> Vec<u8> {
    match c {
        ironpxe_tftp::Content::Memory(b) => b.to_vec(),
        ironpxe_tftp::Content::File { file, size } => {
            use std::os::unix::fs::FileExt;
            let mut out = vec![0u8; size as usize];
            file.read_exact_at(&mut out, 0).unwrap();
            out
        }
    }
}

#[test]
fn grub_files_serve_the_dispatcher_configs_and_the_spec_files() {
    let dir = tempfile::tempdir().unwrap();
    let kernel = dir.path().join("vmlinuz");
    let initrd = dir.path().join("initrd.img");
    std::fs::write(&kernel, b"kernel bytes").unwrap();
    std::fs::write(&initrd, b"initrd bytes").unwrap();
    let s = BootSpec {
        kernel: FileRef::Local(kernel.clone()),
        initrds: vec![FileRef::Local(initrd.clone())],
        cmdline: "console=ttyS0".into(),
        message: None,
        loader: Loader::Shim,
    };
    let f = files_for(s.clone());
    // In memory: no blocking needed.
    assert_eq!(
        bytes_of(f.open_nonblocking("grub/grub.cfg").unwrap().unwrap()),
        render::dispatch_config().as_bytes()
    );
    assert_eq!(
        f.open_nonblocking("/grub.cfg").unwrap().unwrap().len(),
        render::dispatch_config().len() as u64
    );
    assert!(f
        .open_nonblocking("grub/x86_64-efi/command.lst")
        .unwrap()
        .unwrap()
        .is_empty());
    // Not ours: the next source may have it.
    assert!(matches!(
        f.open_nonblocking("pxelinux.0"),
        Some(Err(OpenError::NotFound))
    ));
    assert!(matches!(f.open("grub/other.cfg"), Err(OpenError::NotFound)));
    assert!(matches!(
        f.open("grub/../etc/passwd"),
        Err(OpenError::AccessViolation(_))
    ));
    // A machine's configuration needs the booter.
    let cfg_path = GrubPath::Machine {
        mac: MAC,
        cpu: EfiCpu::X64,
    }
    .to_path();
    assert!(f.open_nonblocking(&cfg_path).is_none());
    let cfg = bytes_of(f.open(&cfg_path).unwrap());
    let cfg = std::str::from_utf8(&cfg).unwrap();
    let run = sim::run(cfg, TFTP_VARS).unwrap();
    assert!(run.booted);
    let (kpath, _) = run.linux.unwrap();
    // Kernels and initrds are opened, to be read while they are sent, never read
    // whole into memory.
    let k = f.open(&kpath).unwrap();
    assert!(k.as_memory().is_none(), "the kernel was read into memory");
    assert_eq!(bytes_of(k), b"kernel bytes");
    assert_eq!(bytes_of(f.open(&run.initrds[0]).unwrap()), b"initrd bytes");
    // A changed file is read again.
    std::fs::write(&initrd, b"new initrd, longer").unwrap();
    assert_eq!(
        bytes_of(f.open(&run.initrds[0]).unwrap()),
        b"new initrd, longer"
    );
    // Only files some spec references are served, whatever the path says.
    let other = FileRef::Local(dir.path().join("secret"));
    std::fs::write(dir.path().join("secret"), b"no").unwrap();
    let sneaky = GrubPath::File {
        mac: MAC,
        step: GrubStep::Kernel { initrds: 0 },
        id: other.id(),
        name: "secret".into(),
    }
    .to_path();
    assert!(matches!(f.open(&sneaky), Err(OpenError::NotFound)));
}

#[test]
fn a_spec_grub_cannot_carry_gets_a_config_that_says_why() {
    let f = files_for(spec("a=\"b\"", None));
    let cfg = bytes_of(
        f.open(
            &GrubPath::Machine {
                mac: MAC,
                cpu: EfiCpu::Arm64,
            }
            .to_path(),
        )
        .unwrap(),
    );
    let run = sim::run(std::str::from_utf8(&cfg).unwrap(), &[]).unwrap();
    assert!(run.exited && run.linux.is_none());
    assert!(
        run.echoes[0].contains("cannot be booted through GRUB: cmdline: '\"' at byte 2"),
        "{:?}",
        run.echoes
    );
}

#[tokio::test]
async fn http_serves_grub_files_with_a_length() {
    use http_body_util::BodyExt;
    use tower::ServiceExt;
    let dir = tempfile::tempdir().unwrap();
    let kernel = dir.path().join("vmlinuz");
    std::fs::write(&kernel, vec![7u8; 200_000]).unwrap();
    let s = BootSpec {
        kernel: FileRef::Local(kernel),
        initrds: vec![],
        cmdline: String::new(),
        message: None,
        loader: Loader::Grub,
    };
    let kpath = GrubPath::File {
        mac: MAC,
        step: GrubStep::Kernel { initrds: 0 },
        id: s.kernel.id(),
        name: "vmlinuz".into(),
    }
    .to_path();
    let app = crate::http::router(Arc::new(files_for(s)));
    let get = |p: String| {
        axum::http::Request::get(format!("/{p}"))
            .body(axum::body::Body::empty())
            .unwrap()
    };
    let r = app.clone().oneshot(get(kpath)).await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-length"], "200000");
    let body = r.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(body.len(), 200_000);
    let r = app
        .clone()
        .oneshot(get("grub/grub.cfg".into()))
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = app
        .clone()
        .oneshot(get("grub/nothing".into()))
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
}

/// GRUB 2.06 reads an HTTP body's length only from a header spelled
/// `Content-Length: `, and without it reads until the connection closes: over
/// ironpxe's own HTTP server, a GRUB file's answer spells it so and ends the
/// connection, although the request (HTTP/1.1, no `Connection: close`) would keep it
/// alive.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_ironpxes_server_a_grub_answer_spells_its_length_and_closes() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let f = Arc::new(files_for(spec("x", None)));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(ironpxe_http::serve(
        listener,
        crate::http::router(f),
        async {
            let _ = stop_rx.await;
        },
        std::time::Duration::from_secs(1),
    ));
    let mut c = tokio::net::TcpStream::connect(addr).await.unwrap();
    c.write_all(b"GET /grub/grub.cfg HTTP/1.1\r\nHost: x\r\nUser-Agent: GRUB 2.06\r\n\r\n")
        .await
        .unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(
        std::time::Duration::from_secs(10),
        c.read_to_end(&mut answer),
    )
    .await
    .expect("the server closed the connection after the answer")
    .unwrap();
    let text = String::from_utf8_lossy(&answer);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    // GRUB reads the length only when written exactly so.
    let len = render::dispatch_config().len();
    assert!(
        text.contains(&format!("\r\nContent-Length: {len}\r\n")),
        "{text}"
    );
    assert!(text.contains("\r\nConnection: close\r\n"), "{text}");
    assert!(text.ends_with(&render::dispatch_config()), "{text}");
    let _ = stop_tx.send(());
    let _ = server.await;
}

/// Every event emitted in this test binary.
fn collected() -> &'static std::sync::Mutex<Vec<ironpxe_core::BootEvent>> {
    struct Collector;
    static EVENTS: std::sync::Mutex<Vec<ironpxe_core::BootEvent>> =
        std::sync::Mutex::new(Vec::new());
    impl ironpxe_core::EventSink for Collector {
        fn event(&self, e: &ironpxe_core::BootEvent) {
            EVENTS.lock().unwrap().push(e.clone());
        }
    }
    static INSTALLED: std::sync::Once = std::sync::Once::new();
    INSTALLED.call_once(|| {
        ironpxe_core::event::set_sink(Arc::new(Collector));
    });
    &EVENTS
}

/// Over HTTP, sending the last byte of a machine's last file marks its boot; an
/// earlier file does not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_http_the_last_file_marks_the_boot() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let events = collected();
    let mac = MacAddr([0x52, 0x54, 0x00, 0x77, 0x00, 0x01]);
    let dir = tempfile::tempdir().unwrap();
    let (kernel, initrd) = (dir.path().join("vmlinuz"), dir.path().join("initrd"));
    std::fs::write(&kernel, vec![1u8; 300_000]).unwrap();
    std::fs::write(&initrd, vec![2u8; 100_000]).unwrap();
    let s = BootSpec {
        kernel: FileRef::Local(kernel),
        initrds: vec![FileRef::Local(initrd)],
        cmdline: String::new(),
        message: None,
        loader: Loader::Grub,
    };
    let path = |step, f: &FileRef| {
        GrubPath::File {
            mac,
            step,
            id: f.id(),
            name: f.file_name("x"),
        }
        .to_path()
    };
    let kpath = path(GrubStep::Kernel { initrds: 1 }, &s.kernel);
    let ipath = path(GrubStep::Initrd { index: 1, of: 1 }, &s.initrds[0]);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(ironpxe_http::serve(
        listener,
        crate::http::router(Arc::new(files_for(s))),
        async {
            let _ = stop_rx.await;
        },
        std::time::Duration::from_secs(1),
    ));
    let booted = |file: &str| {
        events.lock().unwrap().iter().any(|e| {
            matches!(e, ironpxe_core::BootEvent::GrubBooting { mac: m, file: f, .. }
                if *m == mac && f == file)
        })
    };
    for (p, len) in [(&kpath, 300_000usize), (&ipath, 100_000)] {
        let mut c = tokio::net::TcpStream::connect(addr).await.unwrap();
        c.write_all(format!("GET /{p} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
            .await
            .unwrap();
        let mut answer = Vec::new();
        tokio::time::timeout(
            std::time::Duration::from_secs(10),
            c.read_to_end(&mut answer),
        )
        .await
        .unwrap()
        .unwrap();
        assert!(answer.len() > len, "{}", answer.len());
        if p == &kpath {
            assert!(!booted(&kpath), "the kernel is not the last file");
        }
    }
    assert!(booted(&ipath), "no grub.booting after the last initrd");
    let _ = stop_tx.send(());
    let _ = server.await;
}
