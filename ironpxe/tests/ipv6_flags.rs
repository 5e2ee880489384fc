//! The IPv6 settings through the real binary: `ironpxe check` names every bad IPv6
//! key with its line, and a server refuses an address it cannot announce or a
//! stateful range without a place for its leases, in one line, before serving.

use std::process::Command;

fn ironpxe(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_ironpxe"))
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn check_reports_each_bad_ipv6_key() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("v6.toml");
    std::fs::write(
        &file,
        "[server]\nipv6 = true\nlisten_addr6 = \"fe80::2\"\n\
         ipv6_range = \"fd00::1-fd01::1\"\nipv6_stateful = \"everyone\"\n",
    )
    .unwrap();
    let f = file.to_str().unwrap();
    let (code, out, err) = ironpxe(&["check", "--config", f, "--no-file-checks"]);
    assert_eq!(code, 1, "{out}{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 3, "{out}");
    assert!(
        lines[0].starts_with(&format!(
            "{f}:3: server.listen_addr6: fe80::2 is a link-local address"
        )),
        "{out}"
    );
    assert!(
        lines[1].starts_with(&format!(
            "{f}:4: server.ipv6_range: fd00::1 and fd01::1 are not in the same /64"
        )),
        "{out}"
    );
    assert!(
        lines[2].starts_with(&format!("{f}:5: server.ipv6_stateful: \"everyone\"")),
        "{out}"
    );

    std::fs::write(
        &file,
        "[server]\nipv6 = true\nlisten_addr6 = \"fd00::2\"\nipv6_range = \"fd00::1000-fd00::10ff\"\n",
    )
    .unwrap();
    let (code, out, err) = ironpxe(&["check", "--config", f, "--no-file-checks"]);
    assert_eq!(code, 0, "{out}{err}");
}

#[test]
fn servers_refuse_unusable_ipv6_settings_in_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let kernel = dir.path().join("vmlinuz");
    std::fs::write(&kernel, b"k").unwrap();
    let k = kernel.to_str().unwrap();
    for (flags, want) in [
        (
            &["--ipv6", "--listen-addr6", "fe80::1"][..],
            "--listen-addr6: fe80::1 is a link-local address",
        ),
        (
            &["--ipv6", "--listen-addr6", "ff02::1"][..],
            "--listen-addr6: ff02::1 is a multicast address",
        ),
        (
            &["--ipv6", "--ipv6-range", "fd00::1000-fd00::10ff"][..],
            "ipv6_range fd00::1000-fd00::10ff needs --state-dir DIR",
        ),
    ] {
        let mut args = vec![
            "boot",
            k,
            "--port",
            "0",
            "--ipxe-bios",
            k,
            "--ipxe-efi64",
            k,
        ];
        args.extend_from_slice(flags);
        let (code, out, err) = ironpxe(&args);
        assert_ne!(code, 0, "{flags:?} started: {out}{err}");
        let last = err.lines().last().unwrap_or("");
        assert!(last.contains(want), "{flags:?}: {err}");
    }
    // The IPv6 flags need --ipv6.
    let (code, _, err) = ironpxe(&["boot", k, "--listen-addr6", "fd00::2"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("--ipv6"), "{err}");
}

#[test]
fn the_pixiecore_name_takes_the_ipv6_flags_too() {
    let dir = tempfile::tempdir().unwrap();
    let link = dir.path().join("pixiecore");
    std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_ironpxe"), &link).unwrap();
    let kernel = dir.path().join("vmlinuz");
    std::fs::write(&kernel, b"k").unwrap();
    let out = Command::new(&link)
        .args([
            "boot",
            kernel.to_str().unwrap(),
            "--ipv6",
            "--listen-addr6",
            "fe80::9",
        ])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_ne!(out.status.code(), Some(0));
    assert!(
        err.contains("--listen-addr6: fe80::9 is a link-local address"),
        "{err}"
    );
    let help = Command::new(&link)
        .args(["boot", "--help"])
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&help.stdout);
    assert!(help.contains("--ipv6"), "{help}");
    assert!(help.contains("[default: off]"), "{help}");
}
