//! The GRUB configuration renderer on arbitrary command lines and messages, run
//! through ironpxe-grub's model of GRUB 2.06's script lexer and `linux` command
//! (`ironpxe_grub::sim`, written from GRUB's sources and checked against the real
//! GRUB by the QEMU tests):
//!
//! - a configuration that renders runs in the model without a lexer error, echoes
//!   exactly the message's lines, loads exactly the machine's kernel and initrds,
//!   and boots; the kernel receives exactly `BOOT_IMAGE=<kernel path> <cmdline>`,
//!   so no user text adds, drops or expands a word, or runs a command of its own;
//! - a refusal names a character that really is at that offset and that GRUB would
//!   alter: a quote, a backslash, a line break or NUL.
//!
//! Input: one byte choosing the CPU and the initrd count, then fields separated by
//! 0xFF (which UTF-8 never contains): cmdline, then message. A missing message field
//! means no message. Seeds: testdata/grub/.
#![no_main]

use std::path::PathBuf;

use ironpxe_core::loader::{GrubPath, GrubStep};
use ironpxe_core::{BootSpec, EfiCpu, FileRef, Loader, MacAddr};
use ironpxe_grub::{machine_config, sim, Answer, GrubError, MachineConfig};
use libfuzzer_sys::fuzz_target;

const MAC: MacAddr = MacAddr([0x52, 0x54, 0x00, 0x12, 0x34, 0x56]);

fn decode(data: &[u8]) -> Option<(EfiCpu, BootSpec)> {
    let (&sel, rest) = data.split_first()?;
    let mut fields = rest
        .split(|&b| b == 0xFF)
        .map(|f| String::from_utf8_lossy(f).into_owned());
    let cmdline = fields.next().unwrap_or_default();
    let message = fields.next();
    let cpu = if sel & 1 == 0 { EfiCpu::X64 } else { EfiCpu::Arm64 };
    let initrds = (0..usize::from(sel >> 1) % 4)
        .map(|i| FileRef::Local(PathBuf::from(format!("/srv/initrd{i}.img"))))
        .collect();
    Some((
        cpu,
        BootSpec {
            kernel: FileRef::Local(PathBuf::from("/srv/vmlinuz")),
            initrds,
            cmdline,
            message,
            loader: Loader::Shim,
        },
    ))
}

/// What GRUB would alter in a kernel argument or a message.
fn alterable(c: char) -> bool {
    matches!(c, '"' | '\'' | '\\' | '\n' | '\r' | '\0')
}

/// The path a file of the spec is served under, as the machine's file names it.
fn file_path(step: GrubStep, f: &FileRef, name: &str) -> String {
    format!(
        "/{}",
        GrubPath::File {
            mac: MAC,
            step,
            id: f.id(),
            name: name.into(),
        }
        .to_path()
    )
}

fuzz_target!(|data: &[u8]| {
    let Some((cpu, spec)) = decode(data) else {
        return;
    };
    let cfg = MachineConfig {
        mac: MAC,
        cpu,
        answer: Answer::Boot(&spec),
        http_port: 8080,
    };
    match machine_config(&cfg) {
        Ok(text) => {
            assert!(
                !spec.cmdline.chars().any(alterable),
                "rendered a cmdline GRUB would alter: {:?}",
                spec.cmdline
            );
            let vars = [
                ("net_default_mac", "52:54:00:12:34:56"),
                ("net_default_server", "10.0.0.2"),
                ("grub_cpu", cpu.grub_cpu()),
            ];
            let run = sim::run(&text, &vars)
                .unwrap_or_else(|e| panic!("GRUB's lexer rejects the config: {e}\n{text}"));
            assert!(run.booted && !run.exited, "did not boot:\n{text}");
            let (kernel, line) = run.linux.expect("no linux command");
            let n = spec.initrds.len();
            let expect_kernel = file_path(GrubStep::Kernel { initrds: n }, &spec.kernel, "vmlinuz");
            assert_eq!(kernel, expect_kernel);
            let expected = if spec.cmdline.is_empty() {
                format!("BOOT_IMAGE={kernel}")
            } else {
                format!("BOOT_IMAGE={kernel} {}", spec.cmdline)
            };
            assert_eq!(line, expected, "the kernel's command line was altered");
            let initrds: Vec<String> = spec
                .initrds
                .iter()
                .enumerate()
                .map(|(i, f)| {
                    file_path(
                        GrubStep::Initrd { index: i + 1, of: n },
                        f,
                        &format!("initrd{i}.img"),
                    )
                })
                .collect();
            assert_eq!(run.initrds, initrds);
            // The message's lines come first (a final line break ends the last line,
            // carriage returns are dropped), then ironpxe's own "loading" line.
            let shown: Vec<String> = match &spec.message {
                None => Vec::new(),
                Some(m) => {
                    let m = m.strip_suffix('\n').unwrap_or(m);
                    m.split('\n').map(|l| l.replace('\r', "")).collect()
                }
            };
            assert_eq!(
                run.echoes.get(..shown.len()),
                Some(&shown[..]),
                "the message was altered:\n{text}"
            );
            assert_eq!(run.echoes.len(), shown.len() + 1, "{:?}", run.echoes);
        }
        Err(GrubError::Unrepresentable { ch, offset, .. }) => {
            // The offset is into the text as written (file markers shown as URLs);
            // this target's command lines and messages have no markers.
            let in_cmdline = spec.cmdline.get(offset..).and_then(|t| t.chars().next());
            let in_message = spec
                .message
                .as_deref()
                .and_then(|m| m.get(offset..))
                .and_then(|t| t.chars().next());
            assert!(
                in_cmdline == Some(ch) || in_message == Some(ch),
                "refused {ch:?} at {offset}, which is not there"
            );
            assert!(
                alterable(ch) || in_message == Some(ch),
                "refused {ch:?}, which GRUB carries"
            );
        }
        Err(_) => {}
    }
});
