//! A small model of iPXE's script interpreter, for tests only.
//!
//! It follows the rules listed in the crate documentation: line splitting from
//! `script.c`, word splitting and `||`/`&&`/`;`/`#` from `exec.c`, repeated `${...}`
//! expansion from `settings.c`, and option parsing that stops at the first word not
//! starting with `-`. It implements only the commands ironpxe's scripts use, and
//! panics on any other, so a script that strays outside the model fails its tests.

use std::collections::{HashMap, HashSet};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Type {
    String,
    Hex,
    Int32,
}

/// A downloaded image.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Image {
    pub name: String,
    pub url: String,
    /// The words after the URL joined with single spaces, as iPXE builds a cmdline.
    pub cmdline: Vec<u8>,
}

/// What happened when a script ran.
#[derive(Debug, Default)]
pub(crate) struct Run {
    /// Everything `echo` printed.
    pub console: Vec<u8>,
    /// The kernel (the image `kernel` selected), if any.
    pub kernel: Option<Image>,
    /// Registered images, in registration order.
    pub images: Vec<Image>,
    /// Every URL the script tried to fetch, in order.
    pub fetches: Vec<String>,
    /// Arguments of each `sleep`.
    pub sleeps: Vec<u32>,
    /// `boot` ran (and, as a Linux kernel would, never returned).
    pub booted: bool,
    /// The drive a `sanboot --drive N` booted (it never returns when it works).
    pub sanbooted: Option<u32>,
    /// The script ended with `exit N`.
    pub exit: Option<i64>,
    /// The script stopped because a command failed (its line).
    pub failed_line: Option<String>,
}

/// Runs `script`. A fetch of a URL for which `fails` returns true fails.
pub(crate) fn run(script: &str, mut fails: impl FnMut(&str) -> bool) -> Run {
    assert!(script.starts_with("#!ipxe\n"), "missing #!ipxe header");
    let mut lines: Vec<&str> = Vec::new();
    for line in script.split('\n') {
        let line = line.strip_suffix('\r').unwrap_or(line);
        // ironpxe never writes continuation lines; the model does not join them.
        assert!(!line.ends_with('\\'), "unexpected continuation: {line}");
        lines.push(line);
    }
    let mut labels = HashMap::new();
    let mut commands = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        let trimmed = line.trim_start_matches(is_space);
        if let Some(rest) = trimmed.strip_prefix(':') {
            let end = rest.find(is_space).unwrap_or(rest.len());
            labels.insert(rest[..end].to_string(), i);
            commands.push(&rest[end..]);
        } else {
            commands.push(trimmed);
        }
    }

    let mut st = State {
        settings: HashMap::new(),
        run: Run::default(),
        registered: Vec::new(),
        goto: None,
        stop: false,
    };
    let mut pc = 0;
    let mut steps = 0;
    while pc < commands.len() {
        steps += 1;
        assert!(steps < 10_000, "script does not terminate");
        let rc = st.system(commands[pc], &mut fails);
        if st.stop {
            break;
        }
        if rc != 0 {
            st.run.failed_line = Some(lines[pc].to_string());
            break;
        }
        pc = match st.goto.take() {
            Some(label) => *labels
                .get(&label)
                .unwrap_or_else(|| panic!("no label {label}")),
            None => pc + 1,
        };
        // `goto` resumes at the line after the label line (the label line itself
        // holds no command in ironpxe scripts).
    }
    st.run.images = st.registered;
    st.run
}

fn is_space(c: char) -> bool {
    matches!(c, ' ' | '\t' | '\n' | '\r' | '\x0b' | '\x0c')
}

struct State {
    settings: HashMap<String, (Type, Vec<u8>)>,
    run: Run,
    registered: Vec<Image>,
    goto: Option<String>,
    stop: bool,
}

#[derive(Clone, Copy)]
enum Next {
    OnSuccess,
    OnFailure,
    Always,
}

impl State {
    /// exec.c `system()`.
    fn system(&mut self, line: &str, fails: &mut impl FnMut(&str) -> bool) -> i32 {
        let tokens: Vec<&str> = line.split(is_space).filter(|t| !t.is_empty()).collect();
        let mut rest = &tokens[..];
        let mut process = true;
        let mut rc = 0;
        loop {
            let mut next = None;
            let mut argc = rest.len();
            for (i, t) in rest.iter().enumerate() {
                if t.starts_with('#') {
                    argc = i;
                    break;
                }
                let n = match *t {
                    "||" => Next::OnFailure,
                    "&&" => Next::OnSuccess,
                    ";" => Next::Always,
                    _ => continue,
                };
                next = Some(n);
                argc = i;
                break;
            }
            if process {
                let argv: Vec<Vec<u8>> = rest[..argc].iter().map(|t| self.expand(t)).collect();
                rc = if argv.is_empty() {
                    0
                } else {
                    self.exec(&argv, fails)
                };
            }
            if self.stop || self.goto.is_some() {
                break;
            }
            let Some(n) = next else { break };
            process = match n {
                Next::OnSuccess => rc == 0,
                Next::OnFailure => rc != 0,
                Next::Always => true,
            };
            rest = &rest[argc + 1..];
        }
        rc
    }

    /// settings.c `expand_settings()`: repeat until no `${` is followed by `}`.
    fn expand(&self, word: &str) -> Vec<u8> {
        let mut s = word.as_bytes().to_vec();
        loop {
            let mut start = None;
            let mut end = None;
            for i in 0..s.len() {
                if s[i] == b'$' && s.get(i + 1) == Some(&b'{') {
                    start = Some(i);
                }
                if start.is_some() && s[i] == b'}' {
                    end = Some(i);
                    break;
                }
            }
            let (Some(a), Some(e)) = (start, end) else {
                return s;
            };
            let name = String::from_utf8_lossy(&s[a + 2..e]).into_owned();
            let value = self.format(&name);
            let mut out = s[..a].to_vec();
            out.extend_from_slice(&value);
            out.extend_from_slice(&s[e + 1..]);
            s = out;
        }
    }

    fn format(&self, name: &str) -> Vec<u8> {
        let (name, ty) = match name.split_once(':') {
            Some((n, "string")) => (n, Some(Type::String)),
            Some((n, "hex")) => (n, Some(Type::Hex)),
            Some((n, "int32")) => (n, Some(Type::Int32)),
            Some((_, other)) => panic!("type {other} not modelled"),
            None => (name, None),
        };
        let Some((stored, raw)) = self.settings.get(name) else {
            return Vec::new();
        };
        match ty.unwrap_or(*stored) {
            // A C string: stops at the first NUL.
            Type::String => raw.iter().copied().take_while(|&b| b != 0).collect(),
            Type::Hex => raw
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect::<Vec<_>>()
                .join(":")
                .into_bytes(),
            Type::Int32 => {
                let v = i32::from_be_bytes(raw[..4].try_into().unwrap());
                v.to_string().into_bytes()
            }
        }
    }

    fn store(&mut self, name: &str, ty: Type, value: &[u8]) -> i32 {
        if value.is_empty() {
            self.settings.remove(name);
            return 0;
        }
        let raw = match ty {
            Type::String => value.to_vec(),
            Type::Hex => {
                let text = std::str::from_utf8(value).unwrap();
                let mut out = Vec::new();
                for (i, part) in text.split(':').enumerate() {
                    assert_eq!(part.len(), 2, "bad hex byte {part:?} at {i} in {text}");
                    out.push(u8::from_str_radix(part, 16).expect("hex digit"));
                }
                out
            }
            Type::Int32 => {
                let v: i32 = std::str::from_utf8(value).unwrap().parse().unwrap();
                v.to_be_bytes().to_vec()
            }
        };
        self.settings.insert(name.to_string(), (ty, raw));
        0
    }

    fn exec(&mut self, argv: &[Vec<u8>], fails: &mut impl FnMut(&str) -> bool) -> i32 {
        let text = |b: &Vec<u8>| String::from_utf8(b.clone()).unwrap();
        let cmd = text(&argv[0]);
        let (opts, args) = getopt(&argv[1..]);
        match cmd.as_str() {
            "set" => {
                assert!(opts.is_empty());
                let name = text(&args[0]);
                let (name, ty) = match name.split_once(':') {
                    Some((n, "hex")) => (n.to_string(), Type::Hex),
                    Some((n, "int32")) => (n.to_string(), Type::Int32),
                    Some((n, "string")) => (n.to_string(), Type::String),
                    None => (name, Type::String),
                    Some(_) => panic!("type not modelled in {name}"),
                };
                let value = concat(&args[1..]);
                self.store(&name, ty, &value)
            }
            "echo" => {
                let mut out = concat(&args);
                if !opts.iter().any(|(o, _)| o == "-n") {
                    out.push(b'\n');
                }
                self.run.console.extend_from_slice(&out);
                0
            }
            "kernel" | "initrd" | "imgfetch" => {
                let url = text(&args[0]);
                self.run.fetches.push(url.clone());
                if fails(&url) {
                    return 1;
                }
                let name = opts
                    .iter()
                    .find(|(o, _)| o == "--name")
                    .map(|(_, v)| text(v.as_ref().unwrap()))
                    .unwrap_or_else(|| url.rsplit('/').next().unwrap().to_string());
                let image = Image {
                    name: name.clone(),
                    url,
                    cmdline: concat(&args[1..]),
                };
                assert!(
                    self.registered.iter().all(|i| i.name != name),
                    "image name {name} registered twice"
                );
                self.registered.push(image.clone());
                if cmd == "kernel" {
                    self.run.kernel = Some(image);
                }
                0
            }
            "imgfree" => {
                if args.is_empty() {
                    self.registered.clear();
                    return 0;
                }
                for a in &args {
                    let name = text(a);
                    let Some(pos) = self.registered.iter().position(|i| i.name == name) else {
                        return 1;
                    };
                    self.registered.remove(pos);
                }
                0
            }
            "inc" => {
                let name = text(&args[0]);
                let by: i32 = args.get(1).map_or(1, |a| text(a).parse().unwrap());
                let cur = self.settings.get(&name).map_or(0, |(_, raw)| {
                    i32::from_be_bytes(raw[..4].try_into().unwrap())
                });
                self.store(&name, Type::Int32, (cur + by).to_string().as_bytes())
            }
            "iseq" => i32::from(args[0] != args[1]),
            "goto" => {
                self.goto = Some(text(&args[0]));
                0
            }
            "sleep" => {
                self.run.sleeps.push(text(&args[0]).parse().unwrap());
                0
            }
            "boot" => {
                assert!(self.run.kernel.is_some(), "boot without a kernel");
                self.run.booted = true;
                self.stop = true;
                0
            }
            "sanboot" => {
                // Only the local-disk form ironpxe writes: no URI, `--no-describe`.
                assert!(args.is_empty(), "sanboot with a URI is not modelled");
                assert!(opts.iter().any(|(o, _)| o == "--no-describe"));
                let drive = opts
                    .iter()
                    .find(|(o, _)| o == "--drive")
                    .and_then(|(_, v)| v.as_ref())
                    .map(text)
                    .expect("sanboot --drive N");
                let drive = u32::from_str_radix(drive.trim_start_matches("0x"), 16).unwrap();
                if fails(&format!("sanboot:{drive:#x}")) {
                    return 1;
                }
                self.run.sanbooted = Some(drive);
                self.stop = true;
                0
            }
            "exit" => {
                self.run.exit = Some(args.first().map_or(0, |a| text(a).parse().unwrap()));
                self.stop = true;
                0
            }
            other => panic!("command {other:?} is not modelled"),
        }
    }
}

/// iPXE's getopt: options until the first word not starting with `-`, or `--`.
/// Returns (option, argument) pairs and the remaining words. `--name` (of the image
/// commands) and `--drive` (of `sanboot`) take an argument; `-n` is `echo`'s flag and
/// `--no-describe` `sanboot`'s.
#[allow(clippy::type_complexity)]
fn getopt(words: &[Vec<u8>]) -> (Vec<(String, Option<Vec<u8>>)>, Vec<Vec<u8>>) {
    let known: HashSet<&str> = ["-n", "--name", "--no-describe", "--drive"]
        .into_iter()
        .collect();
    let mut opts = Vec::new();
    let mut i = 0;
    while i < words.len() && words[i].first() == Some(&b'-') {
        let w = String::from_utf8(words[i].clone()).unwrap();
        i += 1;
        if w == "--" {
            break;
        }
        assert!(known.contains(w.as_str()), "unknown option {w:?}");
        if w == "--name" || w == "--drive" {
            opts.push((w, Some(words[i].clone())));
            i += 1;
        } else {
            opts.push((w, None));
        }
    }
    (opts, words[i..].to_vec())
}

/// exec.c `concat_args()`: words joined with one space.
fn concat(words: &[Vec<u8>]) -> Vec<u8> {
    let mut out = Vec::new();
    for (i, w) in words.iter().enumerate() {
        if i > 0 {
            out.push(b' ');
        }
        out.extend_from_slice(w);
    }
    out
}
