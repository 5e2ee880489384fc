//! iPXE boot scripts for ironpxe.
//!
//! [`boot_script`] turns a [`BootScript`] (ironpxe's HTTP base URL, the machine's
//! [`MacAddr`] and [`ClientArch`], and its [`BootSpec`]) into the text of an iPXE script.
//! Rendering is pure: no I/O, no clock, the same input always gives the same script.
//! The HTTP crate serves the result at `/_/ipxe`; the script then fetches the kernel
//! and initrds from `/_/file?name=<FileId>&mac=<mac>&arch=<code>` (each file URL names
//! the machine it is handed to), calls `/_/booting` and boots. Every URL
//! in a script is built by [`BootUrls`], which the HTTP server parses with.
//!
//! # How iPXE reads a script line, and why user text is hex-encoded
//!
//! What follows was read from iPXE's `src/image/script.c`, `src/core/exec.c` and
//! `src/core/settings.c`. The tokenising and expansion code has not changed since
//! 2016, so the Debian 2019/2022 builds behave the same way.
//!
//! 1. The script is cut into lines at `\n`. A trailing `\r` is dropped. A line ending
//!    in `\` is joined with the next line. A first word starting with `:` is a label.
//! 2. A line is split into words at runs of whitespace (space, `\t`, `\n`, `\v`, `\f`,
//!    `\r`). **There is no quoting and no backslash escape.** `"` and `'` are plain
//!    characters.
//! 3. A word that *starts* with `#` ends the command (a comment). The words `||`, `&&`
//!    and `;`, each on its own, separate commands. Inside a longer word they are plain.
//! 4. Each remaining word is then expanded on its own. Expansion repeats on the whole
//!    word until no `${` is followed by a `}`. Each pass replaces the innermost
//!    `${name}` with the setting's value (unknown names give the empty string).
//!    **The value is scanned again**, so a value that contains `${x}` is expanded too.
//!    The expanded word is **not** split again, so a value may hold spaces.
//! 5. `kernel`, `imgargs` and `echo` join their remaining words with exactly one
//!    space. Options are parsed with a getopt that stops at the first word not
//!    starting with `-`, and at `--`.
//!
//! So ironpxe never writes user text into a script line. It stores the text's bytes in
//! a setting with `set ironpxe-cmdline0:hex 63:6f:...` (hex digits and `:` only, which
//! no rule above touches). Then it refers to the setting as `${ironpxe-cmdline0:string}`.
//! The `:string` suffix matters. Without it iPXE formats the value with its stored
//! type, which would print the hex back.
//!
//! Because of rule 4, a `}` that follows a `${` in the same word can never reach the
//! kernel: iPXE would expand it. ironpxe therefore cuts the text into several words at
//! a space between the `${` and the `}`. The kernel joins those words again with that
//! one space, so the text arrives unchanged. Runs of spaces, tabs, quotes, `#`, `||`,
//! `&&`, `;`, `=`, a lone `$`, and `${` without a closing `}` all pass through exactly.
//! A console message is printed with several `echo -n` commands, so it can always be
//! cut between the `$` and the `{`, and any message can be shown.
//!
//! What is refused, with a [`ScriptError`] that names the field, character and offset:
//! - in the cmdline, a `}` after a `${` with no space between them;
//! - in the cmdline, `\n` or `\r` (a kernel command line is one line);
//! - in any field, NUL (iPXE settings are C strings).
//!
//! # Command line templates
//!
//! A cmdline may reference files as `{{ ID "<file id>" }}`, the canonical form that
//! booters produce from `{{ URL "x" }}` (see [`ironpxe_core::template`]). Each one
//! is expanded to `<base>/_/file?name=<id>&mac=<mac>&arch=<code>` before escaping,
//! so the kernel gets a URL of this server, as the client reached it, bound to this
//! machine.
//!
//! # Failure handling in the script
//!
//! If the kernel or an initrd fails to download, the script frees what it has
//! fetched, then waits 2, 4, 8 and 16 seconds before attempts 2 to 5. This gives
//! [`MAX_ATTEMPTS`] attempts in about 30 seconds, not an instant reboot loop. After
//! the last failed attempt it prints what failed and runs `exit 1`, which returns to
//! the firmware's next boot option. Before each retry it fetches its own script URL
//! again and discards it: an ironpxe restarted mid-boot then looks the machine up
//! again, and, since file ids are derived from the files, serves the same ids. A
//! failed `boot` is not retried, because it means a bad image, not a network fault.

use std::collections::HashSet;
use std::fmt::{self, Write as _};

use ironpxe_core::template::{render_cmdline_with, TemplateError};
use ironpxe_core::{BootSpec, BootUrls, ClientArch, FileId, FileRef, MacAddr};

/// How many times the script tries to fetch the kernel and initrds before giving up.
pub const MAX_ATTEMPTS: u32 = 5;

/// Seconds slept after the first failed attempt; the wait doubles after each one.
pub const FIRST_RETRY_WAIT_SECS: u32 = 2;

/// Everything a boot script depends on.
#[derive(Clone, Copy, Debug)]
pub struct BootScript<'a> {
    /// ironpxe's HTTP server as the client reaches it, e.g. `http://10.0.0.2:8080`,
    /// without a trailing slash (one is tolerated and dropped).
    pub base_url: &'a str,
    /// The machine being booted.
    pub mac: MacAddr,
    /// Its firmware; EFI firmware gets `initrd=<name>` appended to the cmdline.
    pub arch: ClientArch,
    /// What it boots.
    pub spec: &'a BootSpec,
}

/// Which piece of text could not be put in a script.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Field {
    /// [`BootSpec::cmdline`].
    Cmdline,
    /// [`BootSpec::message`].
    Message,
    /// [`BootScript::base_url`].
    BaseUrl,
}

impl fmt::Display for Field {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Field::Cmdline => "cmdline",
            Field::Message => "message",
            Field::BaseUrl => "base URL",
        })
    }
}

/// Why a script could not be rendered.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ScriptError {
    /// A character iPXE cannot carry through to the kernel or console.
    #[error("{field}: {ch:?} at byte {offset} cannot be passed through iPXE: {reason}")]
    Unrepresentable {
        /// The field holding it.
        field: Field,
        /// The character.
        ch: char,
        /// Its byte offset in the field.
        offset: usize,
        /// Why, and what to do instead.
        reason: &'static str,
    },
    /// The cmdline's `{{ ... }}` template could not be expanded.
    #[error("cmdline: {0}")]
    Template(TemplateError),
    /// The base URL is not an `http://` or `https://` URL.
    #[error("base URL {base:?} must start with http:// or https://")]
    BaseUrlScheme {
        /// The rejected URL.
        base: String,
    },
}

/// Checks that `spec` can be served as an iPXE script at all (its cmdline and
/// message can be carried through iPXE), whatever machine and server it is for.
/// Configuration and API answers are refused with this reason up front.
pub fn check_spec(spec: &BootSpec) -> Result<(), ScriptError> {
    boot_script(&BootScript {
        base_url: "http://ironpxe.invalid",
        mac: MacAddr([0; 6]),
        arch: ClientArch::Bios,
        spec,
    })
    .map(|_| ())
}

/// Renders the iPXE script that boots `p.spec` on `p.mac`.
///
/// The script shows the message (if any), downloads the kernel and initrds from
/// `<base>/_/file?name=<id>&mac=<mac>&arch=<code>`, with retries and backoff, notifies
/// `<base>/_/booting?mac=<mac>&arch=<code>` (ignoring failure) and boots. See the
/// crate documentation for how user text is escaped and which inputs are refused.
pub fn boot_script(p: &BootScript<'_>) -> Result<String, ScriptError> {
    let urls = check_base_url(p.base_url)?;
    let spec = p.spec;
    // Files the cmdline names through `{{ URL "..." }}` are served like the kernel;
    // `{{ DONE_URL }}` is where this machine's installer reports success.
    let file_url = |id: &FileId| urls.file(p.mac, p.arch, id);
    let done_url = urls.installed(p.mac);
    let expanded = render_cmdline_with(&spec.cmdline, &file_url, Some(&done_url))
        .map_err(ScriptError::Template)?;
    let cmdline = Words::new(Field::Cmdline, &expanded)?;
    let message = match &spec.message {
        Some(m) if !m.is_empty() => Some(Words::new(Field::Message, m)?),
        _ => None,
    };

    let (kernel_name, initrd_names) = image_names(spec);
    let url = |f: &FileRef| urls.file(p.mac, p.arch, &f.id());

    let mut s = String::new();
    // Writes one line; writing into a String cannot fail.
    let mut w = |line: fmt::Arguments<'_>| {
        let _ = s.write_fmt(line);
        s.push('\n');
    };

    w(format_args!("#!ipxe"));
    w(format_args!(
        "# ironpxe boot script for {} (arch {}, {})",
        p.mac,
        p.arch.code(),
        p.arch
    ));

    if let Some(msg) = &message {
        match msg {
            Words::Literal(text) => w(format_args!("echo -- {text}")),
            Words::Hex(pieces) => {
                // Printed piece by piece with `echo -n`, so pieces join with nothing
                // between them; `--` keeps a piece starting with `-` from being an option.
                for (i, piece) in pieces.iter().enumerate() {
                    w(format_args!("set ironpxe-message{i}:hex {}", hex(piece)));
                    w(format_args!("echo -n -- ${{ironpxe-message{i}:string}}"));
                }
                w(format_args!("echo"));
            }
        }
    }

    // The kernel's words: the user's cmdline (literal or setting references), then
    // what EFI-stub kernels need to find the initrds.
    let mut kernel_words: Vec<String> = Vec::new();
    match &cmdline {
        Words::Literal(text) => kernel_words.push(text.clone()),
        Words::Hex(pieces) => {
            for (i, piece) in pieces.iter().enumerate() {
                w(format_args!("set ironpxe-cmdline{i}:hex {}", hex(piece)));
                kernel_words.push(format!("${{ironpxe-cmdline{i}:string}}"));
            }
        }
    }
    if p.arch.is_efi() {
        // The EFI stub looks initrds up by name in iPXE's virtual file system; the 2019
        // iPXE builds do not add these themselves.
        for name in &initrd_names {
            kernel_words.push(format!("initrd={name}"));
        }
    }
    let kernel_args: String = kernel_words.iter().map(|wd| format!(" {wd}")).collect();

    w(format_args!("set ironpxe-try:int32 0"));
    w(format_args!(
        "set ironpxe-wait:int32 {FIRST_RETRY_WAIT_SECS}"
    ));
    w(format_args!(":ironpxe-retry"));
    w(format_args!("inc ironpxe-try"));
    w(format_args!("set ironpxe-what kernel {kernel_name}"));
    w(format_args!(
        "kernel --name {kernel_name} {}{kernel_args} || goto ironpxe-failed",
        url(&spec.kernel)
    ));
    for (name, file) in initrd_names.iter().zip(&spec.initrds) {
        w(format_args!("set ironpxe-what initrd {name}"));
        w(format_args!(
            "initrd --name {name} {} || goto ironpxe-failed",
            url(file)
        ));
    }
    // Tell ironpxe the machine is about to boot. A failure here must not stop the boot.
    let booting = urls.booting(p.mac, p.arch);
    w(format_args!(
        "imgfetch --name ironpxe-booting {booting} && imgfree ironpxe-booting ||"
    ));
    w(format_args!("boot ||"));
    w(format_args!("echo ironpxe: booting {kernel_name} failed"));
    w(format_args!("goto ironpxe-give-up"));

    w(format_args!(":ironpxe-failed"));
    w(format_args!(
        "echo ironpxe: could not fetch ${{ironpxe-what}} (attempt ${{ironpxe-try}} of {MAX_ATTEMPTS})"
    ));
    w(format_args!(
        "iseq ${{ironpxe-try}} {MAX_ATTEMPTS} && goto ironpxe-give-up ||"
    ));
    w(format_args!(
        "echo ironpxe: retrying in ${{ironpxe-wait}} seconds"
    ));
    // The running script is unregistered while it executes, so a bare `imgfree`
    // drops only what this attempt downloaded.
    w(format_args!("imgfree"));
    w(format_args!("sleep ${{ironpxe-wait}}"));
    // Ask for this script again before retrying (its result is discarded). If ironpxe
    // restarted meanwhile, this makes it look the machine up again, so the ids below,
    // which are derived from the files themselves, are served again.
    w(format_args!(
        "imgfetch --name ironpxe-refresh {} && imgfree ironpxe-refresh ||",
        urls.script(p.mac, p.arch)
    ));
    w(format_args!("inc ironpxe-wait ${{ironpxe-wait}}"));
    w(format_args!("goto ironpxe-retry"));

    w(format_args!(":ironpxe-give-up"));
    w(format_args!(
        "echo ironpxe: giving up, returning to the firmware"
    ));
    w(format_args!("exit 1"));
    Ok(s)
}

/// How a `local` script leaves the network boot for the disk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LocalBoot {
    /// `sanboot --no-describe --drive 0x80`: iPXE boots the first BIOS hard disk
    /// itself (INT 13h), falling back to `exit 1` when there is none. For BIOS
    /// firmware, where returning to the firmware with `exit` is not always followed
    /// by the next boot device (PXE ROMs that hang or retry the network).
    SanbootDrive80,
    /// `exit 1`: back to the firmware's boot manager with an error, which tries the
    /// next boot option. For UEFI, where iPXE has no INT 13h drive to `sanboot`
    /// ("No such device"), and where `exit 0` (success) makes OVMF, as the UEFI
    /// specification allows, stop at its boot manager menu instead.
    Exit,
}

impl LocalBoot {
    /// The method for a firmware: `sanboot` on BIOS, `exit 1` on UEFI.
    pub fn for_arch(arch: ClientArch) -> LocalBoot {
        if arch.is_efi() {
            LocalBoot::Exit
        } else {
            LocalBoot::SanbootDrive80
        }
    }
}

/// The script for a machine that boots from its local disk ([`LocalBoot::for_arch`]
/// of its firmware). It says so on the console, then leaves the network boot.
///
/// Measured in the lab: SeaBIOS with the iPXE NIC ROM boots the disk with either
/// `sanboot --no-describe --drive 0x80` or `exit`; OVMF with iPXE boots it only after
/// `exit 1` (`exit 0` stops in OVMF's boot manager menu, `sanboot` finds no drive).
pub fn local_boot_script(mac: MacAddr, arch: ClientArch) -> String {
    let code = arch.code();
    let head = format!(
        "#!ipxe\n\
         # ironpxe: {mac} (arch {code}, {arch}) boots from its next boot device\n\
         echo ironpxe: {mac} boots from its next boot device\n"
    );
    match LocalBoot::for_arch(arch) {
        LocalBoot::SanbootDrive80 => format!(
            "{head}sanboot --no-describe --drive 0x80 ||\n\
             echo ironpxe: no local disk 0x80 to boot, returning to the firmware\n\
             exit 1\n"
        ),
        LocalBoot::Exit => format!("{head}exit 1\n"),
    }
}

/// Checks the base URL can be written into a script word as is: no whitespace (which
/// would split it), no `{`/`}` (so no `${...}` expansion) and nothing outside the URL
/// character set. Returns the URLs under it.
fn check_base_url(base: &str) -> Result<BootUrls, ScriptError> {
    let urls = BootUrls::from_base(base).map_err(|_| ScriptError::BaseUrlScheme {
        base: base.to_string(),
    })?;
    if let Some((offset, ch)) = base
        .char_indices()
        .find(|&(_, c)| !(c.is_ascii_alphanumeric() || "-._~:/[]%@!$&'()*+,;=".contains(c)))
    {
        return Err(ScriptError::Unrepresentable {
            field: Field::BaseUrl,
            ch,
            offset,
            reason: "only URL characters are allowed (no whitespace, braces, '?' or '#')",
        });
    }
    Ok(urls)
}

/// Unique iPXE image names: the kernel's, and each initrd's.
///
/// A file's own name is used when it is script-safe and not taken; otherwise the
/// fallback (`kernel`, `initrdN`), suffixed with `-2`, `-3`... if even that is taken.
fn image_names(spec: &BootSpec) -> (String, Vec<String>) {
    // Reserved for the booting callback.
    let mut taken: HashSet<String> = HashSet::from(["ironpxe-booting".to_string()]);
    let mut names = Vec::with_capacity(1 + spec.initrds.len());
    let fallbacks = std::iter::once("kernel".to_string())
        .chain((0..spec.initrds.len()).map(|i| format!("initrd{i}")));
    for (file, fallback) in spec.files().zip(fallbacks) {
        let mut name = file.file_name(&fallback);
        if taken.contains(&name) {
            name = fallback.clone();
        }
        let mut n = 2;
        while taken.contains(&name) {
            name = format!("{fallback}-{n}");
            n += 1;
        }
        taken.insert(name.clone());
        names.push(name);
    }
    let initrds = names.split_off(1);
    (names.remove(0), initrds)
}

/// User text, ready for a script.
#[derive(Debug, PartialEq, Eq)]
enum Words {
    /// Text that iPXE passes through unchanged when written as is (single spaces
    /// between words of plain characters); kept readable for operators who read the
    /// script.
    Literal(String),
    /// Pieces to store in hex settings. For the cmdline they are joined with one space;
    /// for a message, with nothing.
    Hex(Vec<Vec<u8>>),
}

impl Words {
    fn new(field: Field, text: &str) -> Result<Words, ScriptError> {
        let refuse = |offset: usize, ch: char, reason: &'static str| ScriptError::Unrepresentable {
            field,
            ch,
            offset,
            reason,
        };
        for (offset, ch) in text.char_indices() {
            match ch {
                '\0' => return Err(refuse(offset, ch, "iPXE settings cannot hold NUL")),
                '\n' | '\r' if field == Field::Cmdline => {
                    return Err(refuse(
                        offset,
                        ch,
                        "a kernel command line is a single line; use a space",
                    ))
                }
                _ => {}
            }
        }
        if text.is_empty() {
            return Ok(Words::Hex(Vec::new()));
        }
        if is_plain(text) {
            return Ok(Words::Literal(text.to_string()));
        }
        let pieces = match field {
            Field::Message => split_message(text),
            _ => split_cmdline(text).map_err(|offset| {
                refuse(
                    offset,
                    '}',
                    "iPXE expands `${...}` within one word and has no escape for it; \
                     only a `}` separated from the `${` by a space can be passed",
                )
            })?,
        };
        Ok(Words::Hex(pieces))
    }
}

/// True when `text` is words of characters iPXE never treats specially, separated by
/// single spaces, so writing it literally gives exactly `text` back.
fn is_plain(text: &str) -> bool {
    text.split(' ').all(|word| {
        !word.is_empty()
            && word
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.,:/=+@%".contains(c))
    })
}

/// Cuts a cmdline into pieces that iPXE joins back with one space: each cut consumes
/// one space, chosen between a `${` and the `}` that would close it.
///
/// Returns the byte offset of a `}` that cannot be separated from its `${`.
fn split_cmdline(text: &str) -> Result<Vec<Vec<u8>>, usize> {
    let b = text.as_bytes();
    let mut pieces = Vec::new();
    let mut start = 0;
    // Inside the current piece: has a `${` been seen, and the last space after it.
    let mut open = false;
    let mut space_after_open: Option<usize> = None;
    for i in 0..b.len() {
        match b[i] {
            b'$' if b.get(i + 1) == Some(&b'{') => {
                open = true;
                space_after_open = None;
            }
            b' ' if open => space_after_open = Some(i),
            b'}' if open => {
                let cut = space_after_open.ok_or(i)?;
                pieces.push(b[start..cut].to_vec());
                start = cut + 1;
                // The new piece starts after the last `${`, so it holds none.
                open = false;
                space_after_open = None;
            }
            _ => {}
        }
    }
    pieces.push(b[start..].to_vec());
    Ok(pieces)
}

/// Cuts a message between every `$` and a following `{`, so no piece holds `${`.
fn split_message(text: &str) -> Vec<Vec<u8>> {
    let b = text.as_bytes();
    let mut pieces = Vec::new();
    let mut start = 0;
    for i in 1..b.len() {
        if b[i - 1] == b'$' && b[i] == b'{' {
            pieces.push(b[start..i].to_vec());
            start = i;
        }
    }
    pieces.push(b[start..].to_vec());
    pieces
}

/// iPXE's `:hex` setting syntax: `aa:bb:cc`.
fn hex(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(bytes.len() * 3);
    for (i, b) in bytes.iter().enumerate() {
        if i > 0 {
            s.push(':');
        }
        let _ = write!(s, "{b:02x}");
    }
    s
}

#[cfg(test)]
mod sim;

#[cfg(test)]
mod tests;
