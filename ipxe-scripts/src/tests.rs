use super::*;
use crate::sim;

const BASE: &str = "http://10.0.0.2:8080";
const MAC: MacAddr = MacAddr([0x52, 0x54, 0x00, 0x12, 0x34, 0x56]);
/// The machine part of the file URLs of a BIOS script for [`MAC`].
const FOR_BIOS: &str = "&mac=52:54:00:12:34:56&arch=0";

fn spec(cmdline: &str, message: Option<&str>) -> BootSpec {
    BootSpec {
        kernel: FileRef::parse("/srv/boot/vmlinuz").unwrap(),
        initrds: vec![
            FileRef::parse("/srv/boot/initrd.img").unwrap(),
            FileRef::parse("http://mirror.example/nix/store-initrd").unwrap(),
        ],
        cmdline: cmdline.into(),
        message: message.map(Into::into),
        loader: Default::default(),
    }
}

fn render(spec: &BootSpec, arch: ClientArch) -> Result<String, ScriptError> {
    boot_script(&BootScript {
        base_url: BASE,
        mac: MAC,
        arch,
        spec,
    })
}

/// Renders `cmdline` for a BIOS client, runs the script in the iPXE model and returns
/// the command line the kernel image received.
fn kernel_sees(cmdline: &str) -> Vec<u8> {
    let script = render(&spec(cmdline, None), ClientArch::Bios).unwrap();
    let run = sim::run(&script, |_| false);
    assert!(run.booted, "did not boot:\n{script}");
    run.kernel.unwrap().cmdline
}

/// Renders `message`, runs the script and returns what the console printed before
/// the script's own output.
fn console_shows(message: &str) -> Vec<u8> {
    let script = render(&spec("quiet", Some(message)), ClientArch::Bios).unwrap();
    let run = sim::run(&script, |_| false);
    assert!(run.booted, "did not boot:\n{script}");
    run.console
}

fn assert_passes(cmdline: &str) {
    assert_eq!(
        String::from_utf8_lossy(&kernel_sees(cmdline)),
        cmdline,
        "cmdline {cmdline:?} was altered"
    );
}

fn refused(cmdline: &str) -> ScriptError {
    render(&spec(cmdline, None), ClientArch::Bios).unwrap_err()
}

#[test]
fn bios_script_fetches_names_and_boots() {
    let s = spec("console=ttyS0 root=/dev/sda1", Some("Installing node03"));
    let script = render(&s, ClientArch::Bios).unwrap();
    let k = s.kernel.id();
    let i0 = s.initrds[0].id();
    let i1 = s.initrds[1].id();
    // Plain text stays readable in the script.
    assert!(script.contains(&format!(
        "kernel --name vmlinuz {BASE}/_/file?name={k}{FOR_BIOS} console=ttyS0 root=/dev/sda1 || goto ironpxe-failed\n"
    )));
    assert!(script.contains(&format!(
        "initrd --name initrd.img {BASE}/_/file?name={i0}{FOR_BIOS} || goto"
    )));
    assert!(script.contains(&format!(
        "initrd --name store-initrd {BASE}/_/file?name={i1}{FOR_BIOS} || goto"
    )));
    assert!(script.contains("echo -- Installing node03\n"));
    assert!(script.contains(&format!(
        "imgfetch --name ironpxe-booting {BASE}/_/booting?mac=52:54:00:12:34:56&arch=0 && imgfree ironpxe-booting ||\n"
    )));
    assert!(!script.contains("initrd=")); // BIOS: bzImage loader passes initrds itself

    let run = sim::run(&script, |_| false);
    assert!(run.booted);
    assert_eq!(run.console, b"Installing node03\n");
    let k = run.kernel.unwrap();
    assert_eq!(k.name, "vmlinuz");
    assert_eq!(k.cmdline, b"console=ttyS0 root=/dev/sda1");
    let names: Vec<_> = run.images.iter().map(|i| i.name.as_str()).collect();
    // The booting callback's image is freed again so it is not loaded as an initrd.
    assert_eq!(names, ["vmlinuz", "initrd.img", "store-initrd"]);
    assert_eq!(
        run.fetches.last().unwrap(),
        &format!("{BASE}/_/booting?mac=52:54:00:12:34:56&arch=0")
    );
}

#[test]
fn efi_appends_initrd_names_to_the_cmdline() {
    for arch in [ClientArch::EfiX64, ClientArch::EfiBc, ClientArch::HttpArm64] {
        let script = render(&spec("console=ttyS0", None), arch).unwrap();
        let run = sim::run(&script, |_| false);
        assert_eq!(
            run.kernel.unwrap().cmdline,
            b"console=ttyS0 initrd=initrd.img initrd=store-initrd",
            "{arch}"
        );
        assert!(script.contains(&format!("&arch={}", arch.code())));
    }
    // Escaped text and an empty cmdline both keep the appended names separate.
    let script = render(&spec("a  b", None), ClientArch::EfiX64).unwrap();
    let run = sim::run(&script, |_| false);
    assert_eq!(
        run.kernel.unwrap().cmdline,
        b"a  b initrd=initrd.img initrd=store-initrd"
    );
    let script = render(&spec("", None), ClientArch::EfiX64).unwrap();
    let run = sim::run(&script, |_| false);
    assert_eq!(
        run.kernel.unwrap().cmdline,
        b"initrd=initrd.img initrd=store-initrd"
    );
    // Unknown firmware is not assumed to be EFI.
    let script = render(&spec("x", None), ClientArch::Unknown(42)).unwrap();
    assert!(!script.contains("initrd="));
}

#[test]
fn empty_cmdline_and_no_message() {
    let script = render(&spec("", None), ClientArch::Bios).unwrap();
    assert!(!script.contains("echo --"));
    assert!(!script.contains("ironpxe-cmdline"));
    let run = sim::run(&script, |_| false);
    assert!(run.booted);
    assert_eq!(run.kernel.unwrap().cmdline, b"");
    assert!(run.console.is_empty());
    // An empty message prints nothing either.
    let script = render(&spec("", Some("")), ClientArch::Bios).unwrap();
    assert!(sim::run(&script, |_| false).console.is_empty());
}

// Each character class iPXE could misread, and why it arrives unchanged.

#[test]
fn dollar_alone_passes() {
    // `$` not followed by `{` never starts an expansion.
    assert_passes("a=$HOME b=$ c=$$");
    assert_passes("$");
}

#[test]
fn dollar_brace_with_space_before_brace_passes() {
    // The text is cut into two words at the space, so neither word holds both `${`
    // and `}`; `kernel` joins them back with that same single space.
    assert_passes("x=${ y}");
    assert_passes("x=${a b}c ${d e}");
    assert_passes("x=${  }");
    assert_passes("${ ${ }}");
    // A `${` with no `}` after it is left alone by iPXE.
    assert_passes("x=${y");
    assert_passes("x=${");
    // A `}` with no `${` before it is plain.
    assert_passes("}{ {} }x=$}{");
}

#[test]
fn dollar_brace_closed_in_one_word_is_refused() {
    // iPXE would expand `${y}` (to the empty string) and has no escape for it.
    let e = refused("init=/nix/store/x/init x=${y}");
    assert_eq!(
        e,
        ScriptError::Unrepresentable {
            field: Field::Cmdline,
            ch: '}',
            offset: 28,
            reason: "iPXE expands `${...}` within one word and has no escape for it; \
                     only a `}` separated from the `${` by a space can be passed",
        }
    );
    assert!(e.to_string().starts_with("cmdline: '}' at byte 28"));
    // Also when the `}` comes after a space-separated `${ ` earlier in the same text.
    assert!(matches!(
        refused("${ a ${b}"),
        ScriptError::Unrepresentable { offset: 8, .. }
    ));
    // Our own setting names cannot be smuggled in either.
    assert!(matches!(
        refused("${ironpxe-cmdline0:string}"),
        ScriptError::Unrepresentable { ch: '}', .. }
    ));
}

#[test]
fn quotes_and_backslashes_pass() {
    // iPXE has no quoting: quotes are plain characters. There is no backslash escape
    // either; a backslash at the very end of a script line would join lines, but user
    // text never sits on a script line (it is hex-encoded).
    assert_passes(r#"a="b c" d='e  f' g=\"#);
    assert_passes(r"\");
    assert_passes(r"a\ b\\");
}

#[test]
fn hash_passes() {
    // A word starting with `#` would start a comment.
    assert_passes("# not a comment");
    assert_passes("a #b c#d");
}

#[test]
fn command_separators_pass() {
    // `||`, `&&` and `;` as whole words would split the command.
    assert_passes("a || b && c ; d");
    assert_passes("||");
    assert_passes("a;b|c&d");
}

#[test]
fn equals_and_options_pass() {
    // `=` is plain; a word starting with `-` comes after the URL, where getopt has
    // already stopped.
    assert_passes("nixos.install=/dev/sda init=/nix/store/abc-init");
    assert_passes("--help -n -- x");
}

#[test]
fn whitespace_runs_pass() {
    // Words are split at runs of whitespace, but an expanded value is not split again,
    // so spaces and tabs inside a setting survive.
    assert_passes("a  b");
    assert_passes("  leading and trailing  ");
    assert_passes(" ");
    assert_passes("tab\there\x0bvt\x0cff");
}

#[test]
fn non_ascii_passes() {
    assert_passes("hostname=nœud-3 motd=✓");
}

#[test]
fn cmdline_line_breaks_and_nul_are_refused() {
    for (text, ch, offset) in [("a\nb", '\n', 1), ("ab\r", '\r', 2), ("a\0", '\0', 1)] {
        match refused(text) {
            ScriptError::Unrepresentable {
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
fn message_passes_everything_but_nul() {
    // Messages are printed with one `echo -n` per piece and cut between `$` and `{`,
    // so even `${x}` reaches the console.
    for msg in [
        "Installing node03",
        "-n starts like an option",
        "--",
        "cost: $5 ${HOME} ${a}${b} $${x} {y}",
        "# || && ; = \"quoted\" 'single'",
        "two  spaces\tand tab",
        "line one\nline two\n",
        "${ironpxe-message0:string}",
        "ends with $",
    ] {
        let mut expected = msg.as_bytes().to_vec();
        expected.push(b'\n');
        assert_eq!(console_shows(msg), expected, "{msg:?}");
    }
    let e = render(&spec("", Some("a\0b")), ClientArch::Bios).unwrap_err();
    assert!(matches!(
        e,
        ScriptError::Unrepresentable {
            field: Field::Message,
            ch: '\0',
            offset: 1,
            ..
        }
    ));
}

/// The exact rule for what the cmdline can carry, stated independently of the
/// splitting code: refused iff it has a line break or NUL, or a `}` after a `${` with
/// no space in between.
fn representable(text: &str) -> bool {
    let b = text.as_bytes();
    if b.iter().any(|&c| matches!(c, b'\n' | b'\r' | 0)) {
        return false;
    }
    for i in 0..b.len() {
        if b[i] == b'$' && b.get(i + 1) == Some(&b'{') {
            for &c in &b[i + 2..] {
                match c {
                    b' ' => break,
                    b'}' => return false,
                    _ => {}
                }
            }
        }
    }
    true
}

#[test]
fn every_short_cmdline_passes_or_is_refused_correctly() {
    // All strings up to length 5 over the characters that interact (`$`, braces,
    // space, comment and separator characters) and one plain letter.
    let alphabet = ['$', '{', '}', ' ', '#', '|', 'a'];
    let mut texts = vec![String::new()];
    let mut frontier = vec![String::new()];
    for _ in 0..5 {
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
    assert!(texts.len() > 19_000);
    for t in &texts {
        let s = spec(t, Some(t));
        match render(&s, ClientArch::Bios) {
            Ok(script) => {
                assert!(representable(t), "{t:?} should have been refused");
                let run = sim::run(&script, |_| false);
                assert_eq!(run.kernel.unwrap().cmdline, t.as_bytes(), "{t:?}");
                let shown = run.console.strip_suffix(b"\n").unwrap_or(&run.console);
                assert_eq!(shown, t.as_bytes(), "message {t:?}");
            }
            Err(e) => assert!(!representable(t), "{t:?} refused: {e}"),
        }
    }
}

#[test]
fn download_failures_retry_with_growing_waits() {
    let s = spec("quiet", None);
    let script = render(&s, ClientArch::Bios).unwrap();
    let initrd_url = format!("{BASE}/_/file?name={}{FOR_BIOS}", s.initrds[1].id());

    // The second initrd fails twice, then works: two waits, then a clean boot with
    // exactly one copy of each image.
    let mut failures = 2;
    let run = sim::run(&script, |url| {
        if url == initrd_url && failures > 0 {
            failures -= 1;
            true
        } else {
            false
        }
    });
    assert!(run.booted);
    assert_eq!(run.sleeps, [2, 4]);
    assert_eq!(run.images.len(), 3);
    let console = String::from_utf8(run.console).unwrap();
    assert!(console.contains("could not fetch initrd store-initrd (attempt 1 of 5)"));
    assert!(console.contains("retrying in 4 seconds"));

    // Always failing: five attempts, waits doubling, then back to the firmware.
    let run = sim::run(&script, |url| url.contains("/_/file"));
    assert!(!run.booted);
    assert_eq!(run.sleeps, [2, 4, 8, 16]);
    assert_eq!(run.exit, Some(1));
    assert_eq!(
        run.fetches.iter().filter(|u| u.contains("/_/file")).count(),
        MAX_ATTEMPTS as usize
    );
    let console = String::from_utf8(run.console).unwrap();
    assert!(console.contains("could not fetch kernel vmlinuz (attempt 5 of 5)"));
    assert!(console.ends_with("giving up, returning to the firmware\n"));
}

#[test]
fn booting_callback_failure_does_not_stop_the_boot() {
    let script = render(&spec("quiet", None), ClientArch::EfiX64).unwrap();
    let run = sim::run(&script, |url| url.contains("/_/booting"));
    assert!(run.booted);
    assert!(run.sleeps.is_empty());
    assert!(run.failed_line.is_none());
}

#[test]
fn image_names_are_unique() {
    let s = BootSpec {
        kernel: FileRef::parse("http://h/").unwrap(),
        initrds: vec![
            FileRef::parse("/a/initrd").unwrap(),
            FileRef::parse("/b/initrd").unwrap(),
            FileRef::parse("/c/initrd1").unwrap(),
            FileRef::parse("/d/we ird").unwrap(),
            FileRef::parse("/e/ironpxe-booting").unwrap(),
            FileRef::parse("/f/kernel").unwrap(),
        ],
        cmdline: String::new(),
        message: None,
        loader: Default::default(),
    };
    let (kernel, initrds) = image_names(&s);
    assert_eq!(kernel, "kernel");
    assert_eq!(
        initrds,
        ["initrd", "initrd1", "initrd2", "initrd3", "initrd4", "initrd5"]
    );
    let s2 = BootSpec {
        kernel: FileRef::parse("/k/initrd0").unwrap(),
        initrds: vec![FileRef::parse("/a/initrd0").unwrap()],
        cmdline: String::new(),
        message: None,
        loader: Default::default(),
    };
    // The kernel took "initrd0", so the initrd's fallback needs a suffix.
    assert_eq!(
        image_names(&s2),
        ("initrd0".to_string(), vec!["initrd0-2".to_string()])
    );
    let script = render(&s, ClientArch::EfiX64).unwrap();
    let run = sim::run(&script, |_| false);
    assert!(run.booted);
    assert_eq!(
        run.kernel.unwrap().cmdline,
        b"initrd=initrd initrd=initrd1 initrd=initrd2 initrd=initrd3 initrd=initrd4 initrd=initrd5"
    );
}

#[test]
fn base_url_is_checked() {
    let s = spec("", None);
    let with_base = |base: &str| {
        boot_script(&BootScript {
            base_url: base,
            mac: MAC,
            arch: ClientArch::Bios,
            spec: &s,
        })
    };
    let script = with_base("http://[fd00::2]:8080/").unwrap();
    assert!(script.contains("http://[fd00::2]:8080/_/file?name="));
    assert!(with_base("https://boot.example").is_ok());
    assert!(matches!(
        with_base("ftp://x"),
        Err(ScriptError::BaseUrlScheme { .. })
    ));
    for (base, ch) in [
        ("http://a b", ' '),
        ("http://a${x}", '{'),
        ("http://a#", '#'),
        ("http://a\n", '\n'),
    ] {
        assert!(
            matches!(
                with_base(base),
                Err(ScriptError::Unrepresentable { field: Field::BaseUrl, ch: c, .. }) if c == ch
            ),
            "{base:?}"
        );
    }
}

#[test]
fn rendering_is_deterministic_and_well_formed() {
    let s = spec("a ${ b} \"c\"", Some("hi ${x}"));
    let a = render(&s, ClientArch::EfiBc).unwrap();
    assert_eq!(a, render(&s, ClientArch::EfiBc).unwrap());
    assert!(a.starts_with("#!ipxe\n"));
    assert!(a.ends_with("exit 1\n"));
    for line in a.lines() {
        // No user text on a script line: only hex digits and colons after `:hex`.
        if let Some(rest) = line.split(":hex ").nth(1) {
            assert!(rest.chars().all(|c| c.is_ascii_hexdigit() || c == ':'));
        }
        assert!(!line.contains('"'), "{line}");
    }
}

#[test]
fn template_file_urls_expand_to_served_urls() {
    let cfg = FileRef::parse("/srv/cloud-config").unwrap();
    let id = cfg.id();
    let s = spec(
        &format!(
            "console=ttyS0 cfg={} lit={{{{x",
            ironpxe_core::template::file_marker(&id)
        ),
        None,
    );
    let script = render(&s, ClientArch::Bios).unwrap();
    let run = sim::run(&script, |_| false);
    assert!(run.booted);
    assert_eq!(
        String::from_utf8(run.kernel.unwrap().cmdline).unwrap(),
        format!("console=ttyS0 cfg={BASE}/_/file?name={id}{FOR_BIOS} lit={{{{x")
    );
    // A NUL that is not a file marker is still refused.
    let e = render(&spec("a=\0/srv/x\0", None), ClientArch::Bios).unwrap_err();
    assert!(
        matches!(
            e,
            ScriptError::Unrepresentable {
                ch: '\0',
                offset: 2,
                ..
            }
        ),
        "{e:?}"
    );
}

#[test]
fn retries_ask_for_the_script_again_first() {
    let s = spec("quiet", None);
    let script = render(&s, ClientArch::EfiX64).unwrap();
    let kernel_url = format!(
        "{BASE}/_/file?name={}&mac=52:54:00:12:34:56&arch=7",
        s.kernel.id()
    );
    let mut failures = 1;
    let run = sim::run(&script, |url| {
        if url == kernel_url && failures > 0 {
            failures -= 1;
            true
        } else {
            false
        }
    });
    assert!(run.booted);
    let refresh = format!("{BASE}/_/ipxe?mac=52:54:00:12:34:56&arch=7");
    let at = run
        .fetches
        .iter()
        .position(|u| *u == refresh)
        .expect("no refresh");
    assert_eq!(run.fetches[at - 1], kernel_url);
    assert_eq!(run.fetches[at + 1], kernel_url);
    assert_eq!(run.images.len(), 3);
    // A failing refresh does not stop the retry.
    let run = sim::run(&script, |url| url == refresh || url == kernel_url);
    assert_eq!(run.fetches.iter().filter(|u| **u == refresh).count(), 4);
}

#[test]
fn local_boot_script_sanboots_the_disk_on_bios_and_exits_with_an_error_on_uefi() {
    let script = local_boot_script(MAC, ClientArch::Bios);
    assert_eq!(
        script,
        "#!ipxe\n# ironpxe: 52:54:00:12:34:56 (arch 0, bios) boots from its next boot device\n\
         echo ironpxe: 52:54:00:12:34:56 boots from its next boot device\n\
         sanboot --no-describe --drive 0x80 ||\n\
         echo ironpxe: no local disk 0x80 to boot, returning to the firmware\n\
         exit 1\n"
    );
    let run = sim::run(&script, |_| false);
    assert!(!run.booted);
    assert_eq!(run.sanbooted, Some(0x80));
    assert_eq!(run.exit, None);
    assert_eq!(
        String::from_utf8(run.console).unwrap(),
        "ironpxe: 52:54:00:12:34:56 boots from its next boot device\n"
    );
    // No disk: back to the firmware with an error, so it tries its next device.
    let run = sim::run(&script, |u| u == "sanboot:0x80");
    assert_eq!((run.sanbooted, run.exit), (None, Some(1)));

    for arch in [ClientArch::EfiX64, ClientArch::EfiBc, ClientArch::EfiArm64] {
        let script = local_boot_script(MAC, arch);
        let run = sim::run(&script, |_| false);
        assert_eq!((run.sanbooted, run.exit), (None, Some(1)), "{arch}");
        assert!(!script.contains("sanboot"), "{arch}");
    }
}

#[test]
fn done_url_names_this_machine_on_the_server_it_reached() {
    let (canon, _) = ironpxe_core::template::resolve_cmdline(
        "console=ttyS0 ironpxe.done={{ DONE_URL }}",
        &mut |x: &str| FileRef::parse(x).map_err(|e| e.to_string()),
    )
    .unwrap();
    let spec = BootSpec {
        kernel: FileRef::parse("/srv/vmlinuz").unwrap(),
        initrds: vec![],
        cmdline: canon,
        message: None,
        loader: Default::default(),
    };
    let script = boot_script(&BootScript {
        base_url: "http://10.0.0.2:8080",
        mac: MAC,
        arch: ClientArch::Bios,
        spec: &spec,
    })
    .unwrap();
    let run = sim::run(&script, |_| false);
    assert_eq!(
        String::from_utf8(run.kernel.unwrap().cmdline).unwrap(),
        "console=ttyS0 ironpxe.done=http://10.0.0.2:8080/api/v1/machines/52:54:00:12:34:56/installed"
    );
}
