//! The iPXE script renderer on arbitrary kernel and initrd names, command line and
//! message, checked by a tokenizer written here, independently of the renderer, from
//! the rules of iPXE's `script.c`, `exec.c` and `settings.c`:
//!
//! - the script is exactly the expected command lines, in order, and no user text
//!   adds a line, a word, a comment, a `||`/`&&`/`;` or a `${...}` of its own;
//! - the kernel arguments iPXE builds (each word expanded as iPXE expands it, then
//!   joined with one space) are exactly the command line given, followed by
//!   `initrd=NAME` for each initrd on EFI;
//! - what the `echo` commands print is exactly the message;
//! - every file URL names the file and this machine.
//!
//! A render error must name a character that really is at that offset and that iPXE
//! cannot carry there.
//!
//! Input: one byte choosing the firmware, then fields separated by 0xFF (which UTF-8
//! never contains): kernel, cmdline, message, then initrds. A missing message field
//! means no message. Seeds: testdata/ipxe/.
#![no_main]

use std::collections::HashMap;
use std::path::PathBuf;

use ironpxe_core::urls::BootRoute;
use ironpxe_core::{BootSpec, BootUrls, ClientArch, FileRef, MacAddr};
use ironpxe_ipxe::{boot_script, BootScript, Field, ScriptError};
use libfuzzer_sys::fuzz_target;

const BASE: &str = "http://10.0.0.2:8080";
const MAC: MacAddr = MacAddr([0x52, 0x54, 0x00, 0x12, 0x34, 0x56]);
const ARCHS: [u16; 6] = [0, 7, 9, 6, 11, 42];

struct Input {
    arch: ClientArch,
    spec: BootSpec,
}

fn file(name: &str) -> FileRef {
    match FileRef::parse(name) {
        Ok(f) if name.contains("://") => f,
        _ => FileRef::Local(PathBuf::from(format!("/srv/{name}"))),
    }
}

fn decode(data: &[u8]) -> Option<Input> {
    let (&sel, rest) = data.split_first()?;
    let mut fields = rest
        .split(|&b| b == 0xFF)
        .map(|f| String::from_utf8_lossy(f).into_owned());
    let kernel = fields.next().unwrap_or_default();
    let cmdline = fields.next().unwrap_or_default();
    let message = fields.next();
    let initrds: Vec<FileRef> = fields.take(8).map(|n| file(&n)).collect();
    Some(Input {
        arch: ClientArch::from_code(ARCHS[usize::from(sel) % ARCHS.len()]),
        spec: BootSpec {
            kernel: file(&kernel),
            initrds,
            cmdline,
            message,
            loader: Default::default(),
        },
    })
}

/// iPXE's word separators (`isspace` in its C library).
fn is_space(c: char) -> bool {
    matches!(c, ' ' | '\t' | '\n' | '\x0b' | '\x0c' | '\r')
}

fn words(line: &str) -> Vec<&str> {
    line.split(is_space).filter(|w| !w.is_empty()).collect()
}

/// iPXE's expansion of one word: repeatedly, the last `${` before the first `}`
/// that follows it is replaced by the setting's value (empty when unknown), and the
/// word is scanned again.
fn expand(word: &str, settings: &HashMap<String, Vec<u8>>) -> Vec<u8> {
    let mut w = word.as_bytes().to_vec();
    for _ in 0..10_000 {
        let mut start = None;
        let mut end = None;
        for i in 0..w.len() {
            if w[i] == b'$' && w.get(i + 1) == Some(&b'{') {
                start = Some(i);
            }
            if start.is_some() && w[i] == b'}' {
                end = Some(i);
                break;
            }
        }
        let (Some(s), Some(e)) = (start, end) else {
            return w;
        };
        let name = String::from_utf8_lossy(&w[s + 2..e]).into_owned();
        let value = settings.get(&name).cloned().unwrap_or_default();
        let mut next = w[..s].to_vec();
        next.extend_from_slice(&value);
        next.extend_from_slice(&w[e + 1..]);
        w = next;
    }
    panic!("expansion of {word:?} does not end");
}

fn unhex(v: &str) -> Vec<u8> {
    assert!(
        v.bytes().all(|b| b.is_ascii_hexdigit() || b == b':'),
        "hex setting {v:?}"
    );
    v.split(':')
        .map(|h| {
            assert_eq!(h.len(), 2, "hex byte {h:?} in {v:?}");
            u8::from_str_radix(h, 16).unwrap()
        })
        .collect()
}

/// Reads the script line by line against the expected shape.
struct Reader<'a> {
    lines: Vec<&'a str>,
    at: usize,
    settings: HashMap<String, Vec<u8>>,
}

impl<'a> Reader<'a> {
    fn peek(&self) -> Vec<&'a str> {
        words(self.lines.get(self.at).copied().unwrap_or(""))
    }

    fn next(&mut self) -> Vec<&'a str> {
        let w = self.peek();
        assert!(self.at < self.lines.len(), "script ended early");
        self.at += 1;
        w
    }

    fn exact(&mut self, want: &str) {
        let line = self.lines.get(self.at).copied();
        assert_eq!(line, Some(want), "line {}", self.at + 1);
        self.at += 1;
    }

    /// `set NAME:hex HEX`: stores the bytes under `NAME:string`.
    fn hex_setting(&mut self, name: &str) {
        let w = self.next();
        assert_eq!(w.len(), 3, "{w:?}");
        assert_eq!(w[0], "set");
        assert_eq!(w[1], format!("{name}:hex"));
        self.settings.insert(format!("{name}:string"), unhex(w[2]));
    }
}

/// An image name iPXE takes as one plain word.
fn check_name(name: &str) {
    assert!(!name.is_empty());
    assert!(
        name.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)),
        "image name {name:?}"
    );
}

/// A file URL of this machine for `f`.
fn check_url(url: &str, f: &FileRef, arch: ClientArch) {
    let (base, route) = BootRoute::parse_url(url).unwrap_or_else(|e| panic!("{url}: {e}"));
    assert_eq!(base.base(), BASE);
    match route {
        BootRoute::File(q) => {
            assert_eq!(q.id, f.id(), "{url}");
            assert_eq!((q.machine.mac, q.machine.arch), (MAC, arch), "{url}");
        }
        other => panic!("{url} is {other:?}"),
    }
}

/// Checks `script` against `input`, whose command line, with its file markers
/// expanded, is `cmdline`.
fn check_script(script: &str, input: &Input, cmdline: &str) {
    let spec = &input.spec;
    let arch = input.arch;
    assert!(!script.contains('\r'), "a carriage return in the script");
    assert!(script.ends_with('\n'));
    let mut r = Reader {
        lines: script[..script.len() - 1].split('\n').collect(),
        at: 0,
        settings: HashMap::new(),
    };
    for l in &r.lines {
        assert!(!l.ends_with('\\'), "a continuation line: {l:?}");
    }
    r.exact("#!ipxe");
    r.exact(&format!(
        "# ironpxe boot script for {MAC} (arch {}, {arch})",
        arch.code()
    ));

    // The message.
    if let Some(m) = spec.message.as_deref().filter(|m| !m.is_empty()) {
        let mut console: Vec<u8> = Vec::new();
        let w = r.peek();
        if w.first() == Some(&"echo") {
            let w = r.next();
            assert_eq!(w[1], "--");
            for word in &w[2..] {
                assert!(!word.contains("${"));
            }
            console.extend_from_slice(w[2..].join(" ").as_bytes());
        } else {
            let mut k = 0;
            while r.peek().first() == Some(&"set") {
                r.hex_setting(&format!("ironpxe-message{k}"));
                let var = format!("${{ironpxe-message{k}:string}}");
                assert_eq!(r.next(), ["echo", "-n", "--", var.as_str()]);
                console.extend(expand(&var, &r.settings));
                k += 1;
            }
            assert!(k > 0);
            assert_eq!(r.next(), ["echo"]);
        }
        assert_eq!(
            String::from_utf8_lossy(&console),
            m,
            "the console shows something else"
        );
    }

    // The command line settings.
    let mut pieces = 0;
    while r.peek().get(1) == Some(&format!("ironpxe-cmdline{pieces}:hex").as_str()) {
        r.hex_setting(&format!("ironpxe-cmdline{pieces}"));
        pieces += 1;
    }

    r.exact("set ironpxe-try:int32 0");
    r.exact("set ironpxe-wait:int32 2");
    r.exact(":ironpxe-retry");
    r.exact("inc ironpxe-try");

    // The kernel.
    let w = r.next();
    assert_eq!(&w[..2], ["set", "ironpxe-what"], "{w:?}");
    assert_eq!(w[2], "kernel");
    let kernel_name = w[3];
    assert_eq!(w.len(), 4);
    check_name(kernel_name);
    let w = r.next();
    assert!(w.len() >= 7, "{w:?}");
    assert_eq!(&w[..3], ["kernel", "--name", kernel_name]);
    check_url(w[3], &spec.kernel, arch);
    assert_eq!(&w[w.len() - 3..], ["||", "goto", "ironpxe-failed"]);
    let args = &w[4..w.len() - 3];
    for a in args {
        assert!(
            !matches!(*a, "||" | "&&" | ";") && !a.starts_with('#'),
            "user text made a control word {a:?}: {w:?}"
        );
    }
    if pieces > 0 {
        let refs: Vec<String> = (0..pieces)
            .map(|k| format!("${{ironpxe-cmdline{k}:string}}"))
            .collect();
        assert_eq!(&args[..pieces], refs.as_slice());
    } else {
        for a in args {
            assert!(!a.contains('$'), "{a:?}");
        }
    }
    let seen: Vec<Vec<u8>> = args.iter().map(|a| expand(a, &r.settings)).collect();

    // The initrds.
    let mut initrd_names = Vec::new();
    for f in &spec.initrds {
        let w = r.next();
        assert_eq!(&w[..3], ["set", "ironpxe-what", "initrd"], "{w:?}");
        assert_eq!(w.len(), 4);
        let name = w[3];
        check_name(name);
        let w = r.next();
        assert_eq!(w.len(), 7, "{w:?}");
        assert_eq!(&w[..3], ["initrd", "--name", name]);
        check_url(w[3], f, arch);
        assert_eq!(&w[4..], ["||", "goto", "ironpxe-failed"]);
        initrd_names.push(name);
    }
    let mut all = initrd_names.clone();
    all.push(kernel_name);
    all.push("ironpxe-booting");
    all.sort_unstable();
    let n = all.len();
    all.dedup();
    assert_eq!(all.len(), n, "image names are not unique");

    // What the kernel sees: the command line as given, then initrd= on EFI.
    let mut want: Vec<String> = Vec::new();
    if !cmdline.is_empty() {
        want.push(cmdline.to_string());
    }
    if arch.is_efi() {
        want.extend(initrd_names.iter().map(|n| format!("initrd={n}")));
    }
    let got = seen.join(&b' ');
    assert_eq!(
        String::from_utf8_lossy(&got),
        want.join(" "),
        "the kernel sees another command line"
    );

    // The fixed tail.
    let urls = BootUrls::from_base(BASE).unwrap();
    r.exact(&format!(
        "imgfetch --name ironpxe-booting {} && imgfree ironpxe-booting ||",
        urls.booting(MAC, arch)
    ));
    r.exact("boot ||");
    r.exact(&format!("echo ironpxe: booting {kernel_name} failed"));
    r.exact("goto ironpxe-give-up");
    r.exact(":ironpxe-failed");
    r.exact("echo ironpxe: could not fetch ${ironpxe-what} (attempt ${ironpxe-try} of 5)");
    r.exact("iseq ${ironpxe-try} 5 && goto ironpxe-give-up ||");
    r.exact("echo ironpxe: retrying in ${ironpxe-wait} seconds");
    r.exact("imgfree");
    r.exact("sleep ${ironpxe-wait}");
    r.exact(&format!(
        "imgfetch --name ironpxe-refresh {} && imgfree ironpxe-refresh ||",
        urls.script(MAC, arch)
    ));
    r.exact("inc ironpxe-wait ${ironpxe-wait}");
    r.exact("goto ironpxe-retry");
    r.exact(":ironpxe-give-up");
    r.exact("echo ironpxe: giving up, returning to the firmware");
    r.exact("exit 1");
    assert_eq!(r.at, r.lines.len(), "lines after the end");
}

/// A refusal must name a character that is there and that iPXE cannot carry.
fn check_refusal(e: &ScriptError, input: &Input, cmdline: &str) {
    match e {
        ScriptError::Unrepresentable {
            field, ch, offset, ..
        } => {
            let text = match field {
                Field::Cmdline => cmdline,
                Field::Message => input.spec.message.as_deref().unwrap_or(""),
                Field::BaseUrl => panic!("the fixed base URL was refused: {e}"),
            };
            assert_eq!(text[*offset..].chars().next(), Some(*ch), "{e}");
            match (field, ch) {
                (_, '\0') => {}
                (Field::Cmdline, '\n' | '\r') => {}
                (Field::Cmdline, '}') => {
                    // A `${` before it with no space in between.
                    let before = &text[..*offset];
                    let open = before.rfind("${").expect("no ${ before the refused }");
                    assert!(!before[open..].contains(' '), "{e}");
                }
                _ => panic!("refused without cause: {e}"),
            }
        }
        other => panic!("unexpected error {other}"),
    }
}

fuzz_target!(|data: &[u8]| {
    let Some(input) = decode(data) else { return };
    // A booter's command line may name served files (`\0<id>\0` markers), which
    // become this machine's file URLs, and the install-done URL (`\0done\0`), which
    // becomes this machine's `installed` URL; any other NUL must be refused.
    let urls = BootUrls::from_base(BASE).unwrap();
    let file_url = |id: &ironpxe_core::FileId| urls.file(MAC, input.arch, id);
    let done_url = format!("{BASE}/api/v1/machines/{MAC}/installed");
    let cmdline = ironpxe_core::template::render_cmdline_with(
        &input.spec.cmdline,
        &file_url,
        Some(&done_url),
    )
    .expect("markers always expand");
    let p = BootScript {
        base_url: BASE,
        mac: MAC,
        arch: input.arch,
        spec: &input.spec,
    };
    match boot_script(&p) {
        Ok(script) => check_script(&script, &input, &cmdline),
        Err(e) => check_refusal(&e, &input, &cmdline),
    }
});
