//! The Nix files: every one parses, and the NixOS module evaluates offline (without
//! nixpkgs) to the options, service hardening and cluster rendering we document.
//! Needs `nix-instantiate` (Debian: nix-bin; scripts/setup-debian installs it).

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn nix_instantiate() -> Command {
    let mut c = Command::new("nix-instantiate");
    // Debian's nix-bin expects a nixbld group that a plain machine does not have.
    c.env("NIX_CONFIG", "build-users-group =");
    c
}

fn nix_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let p = entry.unwrap().path();
        let name = p.file_name().unwrap().to_string_lossy().into_owned();
        if p.is_dir() {
            if !matches!(
                name.as_str(),
                "target" | ".git" | "lab-out" | ".lab-cache" | "fuzz"
            ) {
                nix_files(&p, out);
            }
        } else if name.ends_with(".nix") {
            out.push(p);
        }
    }
}

fn require_nix() {
    let ok = nix_instantiate()
        .arg("--version")
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    assert!(
        ok,
        "nix-instantiate is missing: install Debian's nix-bin (scripts/setup-debian does)"
    );
    // The first evaluation on a fresh machine creates /nix/var/nix; two at once race
    // on its symlinks ("File exists"). One evaluation runs alone before any other.
    static STORE_READY: std::sync::Once = std::sync::Once::new();
    STORE_READY.call_once(|| {
        let out = nix_instantiate()
            .args(["--eval", "--expr", "1"])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "nix-instantiate cannot evaluate `1`:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    });
}

#[test]
fn every_nix_file_parses() {
    require_nix();
    let mut files = Vec::new();
    nix_files(&workspace(), &mut files);
    for must in [
        "flake.nix",
        "default.nix",
        "nix/module.nix",
        "nix/package.nix",
        "nix/tests/vm-test.nix",
    ] {
        assert!(files.contains(&workspace().join(must)), "{must} is missing");
    }
    for f in &files {
        let out = nix_instantiate().arg("--parse").arg(f).output().unwrap();
        assert!(
            out.status.success(),
            "{} does not parse:\n{}",
            f.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

fn eval() -> Value {
    require_nix();
    let out = nix_instantiate()
        .args(["--eval", "--strict", "--json"])
        .arg(workspace().join("nix/ci/eval.nix"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "nix/ci/eval.nix failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn module_declares_the_documented_options() {
    let v = eval();
    let opts = v["options"].as_object().unwrap();
    for name in [
        "enable",
        "package",
        "interface",
        "openFirewall",
        "settings",
        "machines",
        "apiServer",
        "dhcpNoBind",
        "memoryMax",
        "adminTokenFile",
        "forceDhcpServer",
    ] {
        let o = opts
            .get(name)
            .unwrap_or_else(|| panic!("services.ironpxe.{name} is not declared"));
        assert!(
            !o["description"].as_str().unwrap_or("").is_empty(),
            "{name} has no description"
        );
    }
    assert_eq!(opts["settings"]["type"], "toml");
    assert_eq!(opts["machines"]["type"], "attrsOf submodule");
    assert_eq!(opts["memoryMax"]["default"], "512M");
    for name in ["mode", "subnet", "pool", "leaseTime", "router", "dns"] {
        assert!(
            !opts["dhcp"][name]["description"]
                .as_str()
                .unwrap_or("")
                .is_empty(),
            "services.ironpxe.dhcp.{name} is not declared"
        );
    }
}

#[test]
fn dhcp_server_mode_keeps_state_opens_68_and_gets_its_token_as_a_credential() {
    let v = eval();
    let s = &v["service"]["dhcpServer"];
    let exec = s["serviceConfig"]["ExecStart"].as_str().unwrap();
    assert!(exec.contains("--state-dir /var/lib/ironpxe"), "{exec}");
    assert!(exec.ends_with("--force"), "{exec}");
    assert_eq!(
        s["serviceConfig"]["LoadCredential"],
        serde_json::json!(["admin-token:/run/secrets/admin"])
    );
    assert!(s["path"][0].as_str().unwrap().ends_with("-ipmitool"));
    assert_eq!(
        s["firewall"]["allowedUDPPorts"],
        serde_json::json!([67, 69, 4011, 68])
    );
    // The state directory is passed in every mode; proxy mode opens no 68.
    let plain = &v["service"]["plain"];
    assert!(plain["serviceConfig"]["ExecStart"]
        .as_str()
        .unwrap()
        .contains("--state-dir /var/lib/ironpxe"));
    assert_eq!(
        plain["firewall"]["allowedUDPPorts"],
        serde_json::json!([67, 69, 4011])
    );
}

#[test]
fn seed_cluster_installs_once_with_reservations_and_passes_ironpxe_check() {
    let v = eval();
    let c = &v["cluster"];
    assert_eq!(c["dhcp"]["mode"], "server");
    assert_eq!(c["dhcp"]["subnet"], "10.0.0.0/24");
    for role in ["manager", "storage", "compute"] {
        assert_eq!(c["profiles"][role]["once"], true, "{role}");
    }
    let machines = c["machines"].as_array().unwrap();
    let mut ips: Vec<&str> = machines.iter().map(|m| m["ip"].as_str().unwrap()).collect();
    ips.sort();
    ips.dedup();
    assert_eq!(ips.len(), 20, "reservations must be unique");
    for m in machines {
        let cmdline = m["cmdline"].as_str().unwrap();
        assert!(cmdline.contains("ironpxe.done={{ DONE_URL }}"), "{cmdline}");
        assert!(m["bmc"]["address"].as_str().unwrap().starts_with("10.1.0."));
    }
    // The rendered file is one ironpxe accepts.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("cluster.toml");
    let text = toml::to_string(&c["settings"]).expect("the settings as TOML");
    std::fs::write(&file, &text).unwrap();
    let bin = ironpxe_lab::ironpxe_bin().expect("the ironpxe binary (cargo build -p ironpxe)");
    let out = Command::new(bin)
        .args(["check", "--no-file-checks", "--config"])
        .arg(&file)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "ironpxe check refused the rendered cluster:\n{}{}\n{text}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn service_runs_unprivileged_with_only_the_capabilities_it_needs() {
    let v = eval();
    let plain = &v["service"]["plain"]["serviceConfig"];
    assert_eq!(plain["DynamicUser"], true);
    assert_eq!(
        plain["AmbientCapabilities"],
        serde_json::json!(["CAP_NET_BIND_SERVICE"])
    );
    assert_eq!(
        plain["CapabilityBoundingSet"],
        serde_json::json!(["CAP_NET_BIND_SERVICE"])
    );
    assert_eq!(plain["NoNewPrivileges"], true);
    assert_eq!(plain["ProtectSystem"], "strict");
    assert_eq!(plain["PrivateTmp"], true);
    assert_eq!(plain["Restart"], "on-failure");
    assert_eq!(plain["StateDirectory"], "ironpxe");
    assert_eq!(plain["LimitNOFILE"], 65536);
    assert_eq!(plain["MemoryMax"], "512M");
    assert!(plain["ExecReload"]
        .as_str()
        .unwrap()
        .ends_with("kill -HUP $MAINPID"));
    assert!(!plain["RestrictAddressFamilies"]
        .as_array()
        .unwrap()
        .contains(&"AF_PACKET".into()));

    let raw = &v["service"]["noBind"]["serviceConfig"];
    assert_eq!(
        raw["AmbientCapabilities"],
        serde_json::json!(["CAP_NET_BIND_SERVICE", "CAP_NET_RAW"])
    );
    assert!(raw["RestrictAddressFamilies"]
        .as_array()
        .unwrap()
        .contains(&"AF_PACKET".into()));
    assert!(raw["ExecStart"]
        .as_str()
        .unwrap()
        .contains("--dhcp-no-bind"));

    let fw = &v["service"]["plain"]["firewall"];
    assert_eq!(fw["allowedUDPPorts"], serde_json::json!([67, 69, 4011]));
    assert_eq!(fw["allowedTCPPorts"], serde_json::json!([80]));
}

#[test]
fn module_turns_on_ipv6_with_its_port_and_lease_directory() {
    let v = eval();
    let opts = v["options"].as_object().unwrap();
    for name in ["ipv6", "listenAddress6", "ipv6Range", "ipv6Stateful"] {
        assert!(
            opts.contains_key(name),
            "services.ironpxe.{name} is not declared"
        );
    }
    let plain = v["service"]["plain"]["serviceConfig"]["ExecStart"]
        .as_str()
        .unwrap();
    assert!(!plain.contains("--ipv6"), "IPv6 is off by default: {plain}");
    let on = &v["service"]["ipv6"];
    let exec = on["serviceConfig"]["ExecStart"].as_str().unwrap();
    assert!(
        exec.contains("--ipv6 --ipv6-range fd00::1000-fd00::10ff --ipv6-stateful ipxe --state-dir /var/lib/ironpxe"),
        "{exec}"
    );
    assert_eq!(
        on["firewall"]["allowedUDPPorts"],
        serde_json::json!([67, 69, 4011, 547])
    );
}

#[test]
fn seed_cluster_renders_twenty_machines() {
    let v = eval();
    let machines = v["cluster"]["machines"].as_array().unwrap();
    let count = |role: &str| machines.iter().filter(|m| m["profile"] == role).count();
    assert_eq!(
        (count("manager"), count("storage"), count("compute")),
        (1, 3, 16)
    );
    let mut macs: Vec<&str> = machines
        .iter()
        .map(|m| m["mac"].as_str().unwrap())
        .collect();
    macs.sort();
    macs.dedup();
    assert_eq!(macs.len(), 20, "MACs must be unique");
    assert_eq!(v["cluster"]["interface"], "eno2");

    assert_eq!(
        v["args"]["config"],
        serde_json::json!(["serve", "--config", "/etc/ironpxe.toml"])
    );
    let api: Vec<&str> = v["args"]["api"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    assert_eq!(
        &api[..4],
        [
            "api",
            "file:///etc/ironpxe/api",
            "--api-request-timeout",
            "5s"
        ]
    );
    for w in [
        ["--interface", "eno2"],
        ["--port", "8080"],
        ["--status-port", "9090"],
    ] {
        assert!(api.windows(2).any(|p| p == w), "{w:?} missing in {api:?}");
    }
}
