//! The GRUB configurations ironpxe generates: the dispatcher and one per machine.
//!
//! # How GRUB reads what is written here
//!
//! GRUB's script language (`grub-core/script/yylex.l`, checked against GRUB 2.06):
//! a line is cut into words at unquoted blanks; `;` and a newline end a command;
//! a word starting with `#` starts a comment. Inside `'...'` every character is
//! literal, a `'` cannot appear, and newlines would be part of the word. Inside
//! `"..."`, `$name` and `${name}` are expanded and `\` escapes `"`, `\`, `$`. Outside
//! quotes, `\c` is a literal `c`. Quoted pieces next to each other form one word.
//!
//! So every piece of user text is written single-quoted, a `'` in it as `'\''` (close,
//! a literal quote, reopen). Only the pieces ironpxe itself writes with variables
//! (`${net_default_mac}`, `${ironpxe_host}`) are double-quoted.
//!
//! # How GRUB's `linux` builds the kernel command line
//!
//! `linux FILE ARG...` makes the command line `BOOT_IMAGE=FILE ARG ARG...`: GRUB puts
//! its own `BOOT_IMAGE=` word first and joins the arguments with one space
//! (`grub_create_loader_cmdline`). On the way it puts a `\` before every `"`, `'` and
//! `\` of an argument, and wraps an argument that contains a space in `"..."`. The
//! kernel does not undo either. So:
//!
//! - the command line is cut into arguments at each single space, exactly: a run of
//!   n spaces becomes n-1 empty arguments (`''`), which GRUB joins back into the same
//!   run, and no argument ever holds a space;
//! - `"`, `'` and `\` cannot reach the kernel as written through GRUB and are refused
//!   ([`GrubError::Unrepresentable`]); iPXE (`loader = "ipxe"`) passes them;
//! - a line break or NUL is refused, as for iPXE;
//! - everything else (`$`, `${...}`, `;`, `#`, `|`, `&`, `<`, `>`, `{`, `}`, tabs,
//!   non-ASCII) arrives unchanged.
//!
//! `{{ URL "x" }}` in a command line becomes `http://HOST:PORT/_/file?name=ID`, HOST
//! being the server GRUB itself fetches from (`$net_default_server` without a port,
//! read with GRUB's `regexp`), so the URL names ironpxe as the machine reached it.
//!
//! Messages may hold anything but NUL. Each line is printed with `echo --` (so a line
//! starting with `-` is not an option); a `\r` is dropped.

use std::fmt::{self, Write as _};

use ironpxe_core::loader::{GrubPath, GrubStep};
use ironpxe_core::template::{render_cmdline, TemplateError};
use ironpxe_core::{BootSpec, BootUrls, EfiCpu, FileId, MacAddr};

/// How many times a machine's configuration tries to load its kernel and initrds.
pub const ATTEMPTS: u32 = 3;

/// Seconds between attempts, and before giving up to the next boot device (so the
/// message can be read on the console).
pub const WAIT_SECS: u32 = 5;

/// Which piece of text could not be put in a GRUB configuration.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Field {
    /// [`BootSpec::cmdline`].
    Cmdline,
    /// [`BootSpec::message`].
    Message,
}

impl fmt::Display for Field {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Field::Cmdline => "cmdline",
            Field::Message => "message",
        })
    }
}

/// Why a configuration could not be rendered.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum GrubError {
    /// A character GRUB cannot carry to the kernel or console unchanged.
    #[error("{field}: {ch:?} at byte {offset} cannot be passed through GRUB: {reason}")]
    Unrepresentable {
        /// The field.
        field: Field,
        /// The character.
        ch: char,
        /// Its byte offset in the field.
        offset: usize,
        /// Why.
        reason: &'static str,
    },
    /// A file reference in the command line is malformed.
    #[error("cmdline: {0}")]
    Template(#[from] TemplateError),
}

/// What a machine's configuration does.
#[derive(Clone, Copy, Debug)]
pub enum Answer<'a> {
    /// Boot this spec.
    Boot(&'a BootSpec),
    /// Leave GRUB to the firmware's next boot device (`boot = "local"`).
    Local,
    /// No spec for this machine; the reason is shown, then GRUB exits to the next
    /// boot device.
    NotBooted(&'a str),
}

/// Everything a machine's configuration depends on.
#[derive(Clone, Copy, Debug)]
pub struct MachineConfig<'a> {
    /// The machine.
    pub mac: MacAddr,
    /// The CPU its GRUB runs on.
    pub cpu: EfiCpu,
    /// What it does.
    pub answer: Answer<'a>,
    /// ironpxe's HTTP port, for files a command line names (`{{ URL "x" }}`).
    pub http_port: u16,
}

/// A GRUB word holding `text` literally: single-quoted, `'` written as `'\''`.
pub fn quote(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    out.push('\'');
    for c in text.chars() {
        if c == '\'' {
            out.push_str("'\\''");
        } else {
            out.push(c);
        }
    }
    out.push('\'');
    out
}

/// The dispatcher, served as `grub/grub.cfg`: it sources the configuration of the
/// machine GRUB runs on, by its MAC address and CPU. Reaching its end means that
/// file could not be read; it says so and exits to the next boot device.
pub fn dispatch_config() -> String {
    // The same path GrubPath::Machine names, with GRUB's variables in its place.
    let probe = GrubPath::Machine {
        mac: MacAddr([0; 6]),
        cpu: EfiCpu::X64,
    }
    .to_path();
    let pattern = probe
        .replacen(&MacAddr([0; 6]).to_string(), "${net_default_mac}", 1)
        .replacen(EfiCpu::X64.grub_cpu(), "${grub_cpu}", 1);
    format!(
        "# Generated by ironpxe: each machine boots its own configuration, by MAC address.\n\
         source \"/{pattern}\"\n\
         echo -- \"ironpxe: no configuration could be loaded for ${{net_default_mac}}; trying the next boot device\"\n\
         sleep {WAIT_SECS}\n\
         exit\n"
    )
}

/// Checks that a spec can be rendered, whatever the machine (as `ironpxe check`
/// does for every spec whose loader is GRUB or shim).
pub fn check_spec(spec: &BootSpec) -> Result<(), GrubError> {
    machine_config(&MachineConfig {
        mac: MacAddr([0; 6]),
        cpu: EfiCpu::X64,
        answer: Answer::Boot(spec),
        http_port: 80,
    })
    .map(|_| ())
}

/// The configuration of one machine, served as `grub/m/<mac>/<cpu>.cfg`.
pub fn machine_config(m: &MachineConfig<'_>) -> Result<String, GrubError> {
    let mac = m.mac;
    let mut out = String::new();
    match m.answer {
        Answer::Boot(spec) => boot(&mut out, m, spec)?,
        Answer::Local => {
            let _ = writeln!(out, "# Generated by ironpxe for {mac}: boot = \"local\".");
            let _ = writeln!(
                out,
                "echo -- {}",
                quote(&format!("ironpxe: {mac} boots from its next boot device"))
            );
            out.push_str("exit\n");
        }
        Answer::NotBooted(reason) => {
            let _ = writeln!(out, "# Generated by ironpxe for {mac}: not booted.");
            let text = format!(
                "ironpxe: {mac} has no boot configuration ({}); trying the next boot device",
                one_line(reason)
            );
            let _ = writeln!(out, "echo -- {}", quote(&text));
            let _ = writeln!(out, "sleep {WAIT_SECS}");
            out.push_str("exit\n");
        }
    }
    Ok(out)
}

fn boot(out: &mut String, m: &MachineConfig<'_>, spec: &BootSpec) -> Result<(), GrubError> {
    let mac = m.mac;
    let n = spec.initrds.len();
    let plural = if n == 1 { "" } else { "s" };
    let kernel_name = spec.kernel.file_name("kernel");
    let _ = writeln!(
        out,
        "# Generated by ironpxe for {mac}: kernel {kernel_name}, {n} initrd{plural}, loader {}.",
        spec.loader
    );
    if let Some(msg) = &spec.message {
        for line in message_lines(msg)? {
            let _ = writeln!(out, "echo -- {}", quote(&line));
        }
    }
    let args = cmdline_words(&spec.cmdline, m)?;
    if spec.cmdline.contains('\0') {
        // The host GRUB fetches from, without the port of an HTTP server.
        out.push_str("regexp --set=1:ironpxe_host '^([^:]*)' \"${net_default_server}\"\n");
    }
    let _ = writeln!(
        out,
        "echo -- {}",
        quote(&format!(
            "ironpxe: {mac}: loading {kernel_name} and {n} initrd{plural}"
        ))
    );
    let path = |step, f: &ironpxe_core::FileRef, fallback: &str| {
        quote(&format!(
            "/{}",
            GrubPath::File {
                mac,
                step,
                id: f.id(),
                name: f.file_name(fallback),
            }
            .to_path()
        ))
    };
    let _ = writeln!(
        out,
        "for ironpxe_attempt in {}; do",
        (1..=ATTEMPTS)
            .map(|a| a.to_string())
            .collect::<Vec<_>>()
            .join(" ")
    );
    let _ = write!(
        out,
        "  if linux {}",
        path(GrubStep::Kernel { initrds: n }, &spec.kernel, "kernel")
    );
    for a in &args {
        out.push(' ');
        out.push_str(a);
    }
    out.push_str("; then\n");
    if n == 0 {
        out.push_str("    boot\n");
    } else {
        out.push_str("    if initrd");
        for (i, f) in spec.initrds.iter().enumerate() {
            out.push(' ');
            out.push_str(&path(
                GrubStep::Initrd {
                    index: i + 1,
                    of: n,
                },
                f,
                &format!("initrd{i}"),
            ));
        }
        out.push_str("; then\n      boot\n    fi\n");
    }
    out.push_str("  fi\n");
    let _ = writeln!(
        out,
        "  echo -- \"ironpxe: attempt ${{ironpxe_attempt}} of {ATTEMPTS} failed\""
    );
    let _ = writeln!(out, "  sleep {WAIT_SECS}");
    out.push_str("done\n");
    let _ = writeln!(
        out,
        "echo -- {}",
        quote(&format!(
            "ironpxe: {mac}: could not load the kernel and initrds; trying the next boot device"
        ))
    );
    let _ = writeln!(out, "sleep {WAIT_SECS}");
    out.push_str("exit\n");
    Ok(())
}

/// Reasons come from booters and APIs; a line break would end the `echo`'s quote
/// on a line of its own, which is harmless but unreadable.
fn one_line(text: &str) -> String {
    text.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

fn message_lines(msg: &str) -> Result<Vec<String>, GrubError> {
    if let Some(offset) = msg.find('\0') {
        return Err(GrubError::Unrepresentable {
            field: Field::Message,
            ch: '\0',
            offset,
            reason: "GRUB strings cannot hold NUL",
        });
    }
    let msg = msg.strip_suffix('\n').unwrap_or(msg);
    Ok(msg.split('\n').map(|l| l.replace('\r', "")).collect())
}

/// One argument of `linux`: literal text and served-file URLs.
enum Piece {
    Text(String),
    File(FileId),
}

/// The command line as `linux` arguments, each a GRUB word, or the first character
/// GRUB would alter.
fn cmdline_words(cmdline: &str, m: &MachineConfig<'_>) -> Result<Vec<String>, GrubError> {
    // Check the text as the user wrote it (file markers expanded to a URL of ours,
    // which contains none of the refused characters), with offsets into that text.
    let shown = render_cmdline(cmdline, &file_marker_text)?;
    for (offset, ch) in shown.char_indices() {
        let reason = match ch {
            '"' | '\'' | '\\' => {
                "GRUB puts a backslash before every quote and backslash of a kernel argument, \
                 and the kernel keeps it; use loader \"ipxe\" to pass them"
            }
            '\n' | '\r' => "a kernel command line is a single line",
            '\0' => "a kernel command line cannot hold NUL",
            _ => continue,
        };
        return Err(GrubError::Unrepresentable {
            field: Field::Cmdline,
            ch,
            offset,
            reason,
        });
    }
    if cmdline.is_empty() {
        return Ok(Vec::new());
    }
    // Split the canonical form: text between NUL-delimited file ids.
    let mut args: Vec<Vec<Piece>> = vec![Vec::new()];
    for (i, part) in cmdline.split('\0').enumerate() {
        if i % 2 == 1 {
            let id = FileId::from_wire(part);
            if let Some(last) = args.last_mut() {
                last.push(Piece::File(id));
            }
            continue;
        }
        for (j, word) in part.split(' ').enumerate() {
            if j > 0 {
                args.push(Vec::new());
            }
            if !word.is_empty() {
                if let Some(last) = args.last_mut() {
                    last.push(Piece::Text(word.to_string()));
                }
            }
        }
    }
    let base = BootUrls::from_base(&host_base(m.http_port)).map_err(|_| {
        GrubError::Template(TemplateError {
            offset: 0,
            message: "cannot build the file URL".into(),
        })
    })?;
    Ok(args
        .into_iter()
        .map(|pieces| {
            if pieces.is_empty() {
                return "''".to_string();
            }
            let mut w = String::new();
            for p in pieces {
                match p {
                    Piece::Text(t) => w.push_str(&quote(&t)),
                    Piece::File(id) => {
                        w.push('"');
                        // Bound to the machine, as every file URL ironpxe hands out.
                        w.push_str(&base.file(m.mac, crate::files::arch_of(m.cpu), &id));
                        w.push('"');
                    }
                }
            }
            w
        })
        .collect())
}

/// `http://${ironpxe_host}[:PORT]`, the server part of a file URL in GRUB's terms.
fn host_base(http_port: u16) -> String {
    if http_port == 80 {
        "http://${ironpxe_host}".to_string()
    } else {
        format!("http://${{ironpxe_host}}:{http_port}")
    }
}

/// A stand-in for a file URL while checking the text (offsets of later characters
/// then count from the user's text with the URL in place, which has no refused
/// characters).
fn file_marker_text(id: &FileId) -> String {
    format!("http://server/_/file?name={id}")
}
