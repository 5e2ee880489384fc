//! Root + QEMU (+ Chromium): the boot status after real PXE boots. The JSON API shows
//! the guest's whole timeline up to `booted`, `/metrics` counts the boot, and the
//! status page, loaded by headless Chromium, shows the machine row as booted.
//!
//! Needs the `ironpxe` binary built (`cargo build -p ironpxe`, or scripts/test), and
//! Debian's `curl` and `chromium` packages.

use std::path::Path;
use std::time::{Duration, Instant};

use ironpxe_lab::preflight::{in_path, UNDIONLY_KPXE};
use ironpxe_lab::{boot_once, GuestConfig, Lab, DEFAULT_HTTP_PORT, DEFAULT_MARKER_TIMEOUT};
use serde_json::Value;

const CMDLINE: &str = "console=ttyS0 quiet";

fn need(prog: &str, package: &str) {
    assert!(
        in_path(prog),
        "{prog} is missing: apt-get install {package} (scripts/setup-debian installs it)"
    );
}

/// GETs `url` with curl inside the ironpxe namespace.
fn try_get(lab: &Lab, url: &str) -> Result<String, String> {
    let out = lab
        .run_in(
            &lab.pxe_ns(),
            "curl",
            &["-sS", "--fail", "--max-time", "5", url],
        )
        .expect("run curl");
    if !out.status.success() {
        return Err(format!(
            "curl {url} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(String::from_utf8(out.stdout).expect("UTF-8 answer"))
}

fn get(lab: &Lab, url: &str) -> String {
    try_get(lab, url).unwrap_or_else(|e| panic!("{e}"))
}

/// Polls `/api/v1/machines` until `mac` is in `state` (the booting callback is the
/// guest's last request, so it may arrive a moment after the marker).
fn wait_machine(lab: &Lab, base: &str, mac: &str, state: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let body = match try_get(lab, &format!("{base}/api/v1/machines")) {
            Ok(b) => b,
            Err(e) if Instant::now() < deadline => {
                eprintln!("{e}; retrying");
                std::thread::sleep(Duration::from_millis(250));
                continue;
            }
            Err(e) => panic!("{e}"),
        };
        let v: Value = serde_json::from_str(&body).unwrap_or_else(|e| panic!("{e}: {body}"));
        let m = v["machines"]
            .as_array()
            .expect("machines array")
            .iter()
            .find(|m| m["mac"] == mac)
            .cloned();
        if let Some(m) = m.filter(|m| m["state"] == state) {
            return m;
        }
        assert!(
            Instant::now() < deadline,
            "{mac} not {state} in /api/v1/machines after 15 s:\n{body}"
        );
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// `(event, kind)` of each timeline entry.
/// The machine's timeline as (event, kind), without `dhcp.address`: how often a
/// client repeats its DHCPREQUEST to the site server is up to its timing, so those
/// are checked on their own ([`addresses`]).
fn timeline(m: &Value) -> Vec<(String, String)> {
    m["events"]
        .as_array()
        .expect("events array")
        .iter()
        .filter(|e| e["event"] != "dhcp.address")
        .map(|e| {
            (
                e["event"].as_str().unwrap_or_default().to_string(),
                e["details"]["kind"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
            )
        })
        .collect()
}

/// The addresses ProxyDHCP saw the machine request from the site server.
fn addresses(m: &Value) -> Vec<String> {
    m["events"]
        .as_array()
        .expect("events array")
        .iter()
        .filter(|e| e["event"] == "dhcp.address")
        .map(|e| e["details"]["ip"].as_str().unwrap_or_default().to_string())
        .collect()
}

fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
    list.iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect()
}

fn size(p: &Path) -> u64 {
    std::fs::metadata(p).expect("file size").len()
}

fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .unwrap_or_else(|| panic!("no metric {name} in:\n{text}"))
        .trim()
        .parse()
        .unwrap_or_else(|e| panic!("metric {name}: {e}"))
}

/// The `details` of the first event named `event` (with `kind`, if given).
fn details<'a>(m: &'a Value, event: &str, kind: Option<&str>) -> &'a Value {
    m["events"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["event"] == event && kind.is_none_or(|k| e["details"]["kind"] == k))
        .map(|e| &e["details"])
        .unwrap_or_else(|| panic!("no {event} {kind:?} in {m:#}"))
}

#[test]
fn qemu_status_api_shows_the_bios_boot_timeline_and_metrics() {
    need("curl", "curl");
    let lab = Lab::new("qemu_status_api").expect("build lab");
    let kernel = ironpxe_lab::kernel().expect("test kernel");
    let initrd = lab.initrd().expect("initrd");
    let args = lab.ironpxe_boot_args(&kernel, &[&initrd], CMDLINE);
    let _ironpxe = lab.start_ironpxe(&args).expect("start ironpxe");

    let outcome = boot_once(&lab, GuestConfig::bios(), DEFAULT_MARKER_TIMEOUT).expect("guest");
    if let Err(e) = &outcome.marker {
        panic!(
            "the guest did not boot: {e:#} (logs in {})",
            lab.out_dir().display()
        );
    }
    let mac = outcome.guest.mac().to_string();
    // Without --status-port the status lives on the boot HTTP port.
    let base = format!("http://{}:{DEFAULT_HTTP_PORT}", lab.pxe_addr());
    let m = wait_machine(&lab, &base, &mac, "booted");
    std::fs::write(
        lab.out_dir().join("status-machine.json"),
        serde_json::to_string_pretty(&m).unwrap(),
    )
    .unwrap();

    // This guest's iPXE ROM has HTTP, so it gets the script straight away.
    assert_eq!(
        timeline(&m),
        pairs(&[
            ("dhcp.offer", ""),
            ("http.script", ""),
            ("http.file.start", "kernel"),
            ("http.file.done", "kernel"),
            ("http.file.start", "initrd"),
            ("http.file.done", "initrd"),
            ("http.booting", ""),
        ]),
        "timeline of {mac}: {m:#}"
    );
    assert_eq!(m["name"], Value::Null);
    assert_eq!(m["arch"], "bios");
    assert_eq!(m["progress"], 100);
    assert_eq!(m["boots"], 1);
    assert_eq!(m["stuck"], false);
    let phases: Vec<&str> = m["phases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["phase"].as_str().unwrap())
        .collect();
    assert_eq!(phases, ["offered", "script", "kernel", "initrd", "booted"]);
    let boot_ms = m["boot_ms"].as_u64().expect("boot_ms");
    assert!(boot_ms > 0 && boot_ms < 60_000, "boot took {boot_ms} ms");
    let offer = details(&m, "dhcp.offer", None);
    assert_eq!(offer["path"], "http");
    let kernel_done = details(&m, "http.file.done", Some("kernel"));
    assert_eq!(kernel_done["bytes"], size(&kernel));
    assert!(
        kernel_done["bytes_per_s"].as_u64().unwrap_or(0) > 0,
        "{kernel_done}"
    );
    assert_eq!(
        details(&m, "http.file.done", Some("initrd"))["bytes"],
        size(&initrd)
    );
    // The guest's IP, from the site DHCP server.
    let leases = lab.site_leases();
    let lease = leases
        .iter()
        .find(|(l, _)| *l == mac)
        .map(|(_, ip)| ip.to_string());
    assert_eq!(m["ip"].as_str().map(str::to_string), lease);
    // ProxyDHCP saw the guest ask the site server for that same address.
    let seen = addresses(&m);
    assert!(
        !seen.is_empty() && seen.iter().all(|a| Some(a) == lease.as_ref()),
        "dhcp.address events {seen:?}, lease {lease:?}"
    );

    let text = get(&lab, &format!("{base}/metrics"));
    std::fs::write(lab.out_dir().join("metrics.txt"), &text).unwrap();
    assert_eq!(
        metric(
            &text,
            r#"ironpxe_dhcp_offers_total{arch="bios",path="http"}"#
        ),
        1.0
    );
    assert_eq!(
        metric(&text, r#"ironpxe_http_bytes_total{kind="kernel"}"#),
        size(&kernel) as f64
    );
    assert_eq!(
        metric(&text, r#"ironpxe_http_bytes_total{kind="initrd"}"#),
        size(&initrd) as f64
    );
    assert_eq!(metric(&text, "ironpxe_http_scripts_total"), 1.0);
    assert_eq!(metric(&text, "ironpxe_boots_total"), 1.0);
    assert_eq!(metric(&text, "ironpxe_boot_duration_seconds_count"), 1.0);
    assert_eq!(
        metric(&text, "ironpxe_boot_duration_seconds_sum"),
        boot_ms as f64 / 1000.0
    );
    assert_eq!(metric(&text, r#"ironpxe_machines{state="booted"}"#), 1.0);
    assert_eq!(metric(&text, "ironpxe_machines_stuck"), 0.0);
}

#[test]
fn qemu_status_page_in_chromium_shows_the_chainloaded_guest_booted() {
    need("curl", "curl");
    need("chromium", "chromium");
    const STATUS_PORT: u16 = 8181;
    let lab = Lab::new("qemu_status_page").expect("build lab");
    let kernel = ironpxe_lab::kernel().expect("test kernel");
    let initrd = lab.initrd().expect("initrd");
    let state_dir = lab.tmp_dir().join("state");
    let mut args = lab.ironpxe_boot_args(&kernel, &[&initrd], CMDLINE);
    for a in [
        "--force-chainload",
        "--ipxe-bios",
        UNDIONLY_KPXE,
        "--status-port",
        &STATUS_PORT.to_string(),
        "--state-dir",
        &state_dir.to_string_lossy(),
        "--log-format",
        "json",
    ] {
        args.push(a.into());
    }
    let ironpxe = lab.start_ironpxe(&args).expect("start ironpxe");

    let outcome = boot_once(&lab, GuestConfig::bios(), DEFAULT_MARKER_TIMEOUT).expect("guest");
    if let Err(e) = &outcome.marker {
        panic!(
            "the guest did not boot: {e:#} (logs in {})",
            lab.out_dir().display()
        );
    }
    let mac = outcome.guest.mac().to_string();
    let base = format!("http://{}:{STATUS_PORT}", lab.pxe_addr());
    let m = wait_machine(&lab, &base, &mac, "booted");

    // The lab reads the status feed; the JSON log lines carry the same events.
    let events = lab.ironpxe_events();
    assert!(
        events.iter().any(|e| e.name == "http.booting"),
        "no http.booting in the status feed: {:?}",
        events.iter().map(|e| e.summary()).collect::<Vec<_>>()
    );
    let logged: Vec<(String, Vec<(String, String)>)> = ironpxe
        .lines()
        .iter()
        .filter_map(|l| ironpxe_lab::parse_event_line(&l.text))
        .collect();
    assert!(
        logged.iter().any(|(name, fields)| name == "http.booting"
            && fields.iter().any(|(k, v)| k == "mac" && *v == mac)),
        "no http.booting with mac={mac} among the JSON log lines: {logged:?}"
    );
    // The TFTP chainload has no MAC of its own; it still lands in this timeline.
    assert_eq!(
        timeline(&m),
        pairs(&[
            ("dhcp.offer", ""),
            ("tftp.start", ""),
            ("tftp.done", ""),
            ("dhcp.offer", ""),
            ("http.script", ""),
            ("http.file.start", "kernel"),
            ("http.file.done", "kernel"),
            ("http.file.start", "initrd"),
            ("http.file.done", "initrd"),
            ("http.booting", ""),
        ]),
        "timeline of {mac}: {m:#}"
    );
    assert_eq!(
        details(&m, "tftp.done", None)["bytes"],
        size(Path::new(UNDIONLY_KPXE))
    );
    // The boot port does not serve the status when --status-port is given.
    let boot_port = format!(
        "http://{}:{DEFAULT_HTTP_PORT}/api/v1/machines",
        lab.pxe_addr()
    );
    let out = lab
        .run_in(
            &lab.pxe_ns(),
            "curl",
            &["-s", "-o", "/dev/null", "-w", "%{http_code}", &boot_port],
        )
        .expect("curl");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "404");

    // The page, rendered by headless Chromium inside the namespace.
    let profile = tempfile::tempdir_in(lab.tmp_dir()).expect("chromium profile dir");
    let profile_arg = format!("--user-data-dir={}", profile.path().display());
    let chromium = |extra: &[&str]| {
        // No --virtual-time-budget: this Chromium (156, new headless) never finishes
        // with it. The page carries its machine list, so the first paint is complete.
        let mut a = vec![
            "60",
            "chromium",
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            &profile_arg,
        ];
        a.extend_from_slice(extra);
        let url = format!("{base}/");
        a.push(&url);
        let out = lab
            .run_in(&lab.pxe_ns(), "timeout", &a)
            .expect("run chromium");
        assert!(
            out.status.success(),
            "chromium failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let dom = chromium(&["--dump-dom"]);
    std::fs::write(lab.out_dir().join("status-dom.html"), &dom).unwrap();
    let row = dom
        .split("<tr ")
        .find(|r| r.contains(&format!("data-mac=\"{mac}\"")))
        .unwrap_or_else(|| panic!("no row for {mac} in the rendered page:\n{dom}"));
    let row = row.split("</tr>").next().unwrap_or_default();
    assert!(row.contains("data-state=\"booted\""), "row of {mac}: {row}");
    assert!(row.contains("data-stuck=\"false\""), "row of {mac}: {row}");
    assert!(row.contains(">booted</span>"), "row of {mac}: {row}");
    let shot = lab.out_dir().join("status.png");
    let shot_arg = format!("--screenshot={}", shot.display());
    chromium(&[&shot_arg, "--window-size=1280,800"]);
    let png = std::fs::read(&shot).expect("screenshot written");
    assert!(png.starts_with(b"\x89PNG"), "not a PNG: {}", shot.display());
    println!("status page screenshot: {}", shot.display());

    // A restart with the same --state-dir keeps the history.
    std::thread::sleep(Duration::from_secs(3)); // the store is saved every 2 s
    ironpxe.stop();
    let deadline = Instant::now() + Duration::from_secs(5);
    while ironpxe.is_running() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    let _again = lab.start_ironpxe(&args).expect("restart ironpxe");
    let after = wait_machine(&lab, &base, &mac, "booted");
    assert_eq!(timeline(&after), timeline(&m), "history after a restart");
}
