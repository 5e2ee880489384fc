//! `ironpxe check`: the documented cluster example, and a file with every kind of
//! problem, through the real binary.

use std::process::Command;

fn check(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_ironpxe"))
        .arg("check")
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

const EXAMPLE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/cluster.toml");

/// The example's paths live in the cluster's /nix/store, so the content is checked
/// with --no-file-checks, and without it every missing file is reported by line.
#[test]
fn the_cluster_example_is_accepted() {
    let (code, out, err) = check(&["--config", EXAMPLE, "--no-file-checks"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.ends_with(": ok: 20 machines (18 netboot, 1 local, 1 ignored), other machines are not answered, 2 files\n"),
        "{out}"
    );

    let (code, out, err) = check(&["--config", EXAMPLE]);
    assert_eq!(code, 1, "{out}{err}");
    let lines: Vec<&str> = out.lines().collect();
    // Two iPXE binaries, and kernel + initrd of each of the three profiles.
    assert_eq!(lines.len(), 8, "{out}");
    assert!(lines
        .iter()
        .all(|l| l.contains("/nix/store/") && l.ends_with(": no such file")));
    assert!(
        lines[0].contains("cluster.toml:27: ipxe.bios: iPXE binary /nix/store/"),
        "{out}"
    );
    assert_eq!(
        err.trim_end(),
        format!("ironpxe: error: 8 problems in {EXAMPLE}")
    );
}

#[test]
fn every_problem_is_listed_with_file_line_and_key() {
    let d = tempfile::tempdir().unwrap();
    std::fs::write(d.path().join("bzImage"), "kernel").unwrap();
    let file = d.path().join("bad.toml");
    std::fs::write(
        &file,
        r#"[server]
default_profile = "installer"

[ipxe]
bios = "empty-dir"

[profiles.compute]
kernel = "bzImage"
initrd = ["initrd-missing"]

[[machines]]
mac = "52:54:00:00:00:0g"
profile = "compute"

[[machines]]
mac = "52:54:00:00:00:01"
profile = "comptue"

[[machines]]
mac = "52-54-00-00-00-01"
kernel = "bzImage"
cmdline = "a=${x}"
"#,
    )
    .unwrap();
    std::fs::create_dir(d.path().join("empty-dir")).unwrap();
    let (code, out, _) = check(&["--config", file.to_str().unwrap()]);
    assert_eq!(code, 1, "{out}");
    let f = file.display();
    let dir = d.path().display();
    let want = [
        format!("{f}:2: server.default_profile: unknown profile \"installer\" (defined: compute)"),
        format!("{f}:5: ipxe.bios: iPXE binary {dir}/empty-dir: not a regular file"),
        format!("{f}:9: profiles.compute.initrd[0]: {dir}/initrd-missing: no such file"),
        format!("{f}:12: machines[0].mac: invalid MAC address \"52:54:00:00:00:0g\": expected six hex octets like aa:bb:cc:dd:ee:ff"),
        format!("{f}:17: machines[1].profile: unknown profile \"comptue\" (defined: compute)"),
        format!("{f}:20: machines[2].mac: duplicate MAC 52:54:00:00:00:01: also at line 16"),
        format!("{f}:22: machines[2]: cmdline: '}}' at byte 5 cannot be passed through iPXE: iPXE expands `${{...}}` within one word and has no escape for it; only a `}}` separated from the `${{` by a space can be passed"),
    ];
    assert_eq!(out.lines().collect::<Vec<_>>(), want, "\n{out}");
}

#[test]
fn a_missing_file_is_one_clear_line() {
    let (code, out, err) = check(&["--config", "/nonexistent/ironpxe.toml"]);
    assert_eq!(code, 1);
    assert_eq!(out, "");
    assert_eq!(
        err.trim_end(),
        "ironpxe: error: /nonexistent/ironpxe.toml: cannot read: no such file"
    );
}
