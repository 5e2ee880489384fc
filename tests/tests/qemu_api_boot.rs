//! Root + QEMU: `ironpxe api URL`, pixiecore's API mode.
//!
//! - against a real HTTP API server process (python3's http.server serving a
//!   directory of `v1/boot/<mac>` JSON files, inside the lab's ironpxe namespace),
//!   with a relative initrd URL streamed through ironpxe and a templated
//!   `{{ URL "..." }}` in the command line;
//! - against a file tree (`file:///DIR`, the layout of a Nix linkFarm), with no web
//!   server at all.
//!
//! Needs the `ironpxe` binary built (`cargo build -p ironpxe`, or scripts/test), and
//! python3. Run one test at a time on small machines: `-- --test-threads=1`.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use ironpxe_core::{BootUrls, FileRef, MacAddr};
use ironpxe_lab::{
    boot_once, CapturedUdp, GuestConfig, Lab, DEFAULT_HTTP_PORT, DEFAULT_MARKER_TIMEOUT,
};

const API_MAC: MacAddr = MacAddr([0x52, 0x54, 0x00, 0xa9, 0x00, 0x01]);
const TREE_MAC: MacAddr = MacAddr([0x52, 0x54, 0x00, 0xa9, 0x00, 0x02]);
const API_PORT: u16 = 8099;

/// A process started by this test, killed by PID when dropped.
struct Owned(Child);

impl Drop for Owned {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn api_args(lab: &Lab, url: &str) -> Vec<String> {
    vec![
        "api".into(),
        url.into(),
        "--api-request-timeout".into(),
        "2s".into(),
        "-p".into(),
        DEFAULT_HTTP_PORT.to_string(),
        "--interface".into(),
        lab.pxe_ifname(),
    ]
}

/// tcpdump of DHCP on ironpxe's interface.
fn capture_dhcp(lab: &Lab) -> ironpxe_lab::Capture {
    lab.capture(
        "dhcp",
        &lab.pxe_ns(),
        &lab.pxe_ifname(),
        "udp port 67 or udp port 68",
    )
    .expect("tcpdump")
}

/// Waits (up to 10 s) until `url` answers 200 inside the ironpxe namespace.
fn wait_served(lab: &Lab, url: &str, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let out = lab
            .run_in(&lab.pxe_ns(), "curl", &["-sf", "-o", "/dev/null", url])
            .expect("curl");
        if out.status.success() {
            return;
        }
        assert!(Instant::now() < deadline, "{what} did not come up");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn write(path: &Path, text: &str) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, text).unwrap();
}

#[test]
fn qemu_api_http_server_boot_with_templated_url() {
    let lab = Lab::new("qemu_api_http").expect("build lab");
    let kernel = ironpxe_lab::kernel().expect("test kernel");
    let initrd = lab.initrd().expect("initrd");

    // The API's tree: the answer, the initrd (fetched over HTTP through ironpxe), and
    // a file the cmdline references by template.
    let root = lab.tmp_dir().join("api");
    std::fs::create_dir_all(root.join("v1/files")).unwrap();
    std::fs::copy(&initrd, root.join("v1/files/initrd.img")).unwrap();
    write(
        &root.join("v1/files/cloud-config"),
        "#cloud-config\nhostname: node-07\n",
    );
    let answer = format!(
        r#"{{"kernel": "file://{}", "initrd": ["files/initrd.img"],
            "cmdline": "console=ttyS0 cfg={{{{ URL \"files/cloud-config\" }}}} role=api",
            "message": "NixOS Automatic Installer for node-07"}}"#,
        kernel.display()
    );
    write(&root.join(format!("v1/boot/{API_MAC}")), &answer);
    let _ = std::fs::write(lab.out_dir().join("api-answer.json"), &answer);

    let log = std::fs::File::create(lab.out_dir().join("api-http-server.log")).unwrap();
    let server = Owned(
        Command::new("ip")
            .args([
                "netns",
                "exec",
                &lab.pxe_ns(),
                "python3",
                "-m",
                "http.server",
            ])
            .arg(API_PORT.to_string())
            .args(["--bind", "127.0.0.1", "--directory"])
            .arg(&root)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("python3 -m http.server (apt-get install python3)"),
    );
    let api = format!("http://127.0.0.1:{API_PORT}");
    let probe = format!("{api}/v1/boot/{API_MAC}");
    wait_served(&lab, &probe, "the API server");

    let ironpxe = lab
        .start_ironpxe(&api_args(&lab, &api))
        .expect("start ironpxe");
    let capture = capture_dhcp(&lab);
    let outcome = boot_once(
        &lab,
        GuestConfig {
            mac: Some(API_MAC),
            ..GuestConfig::bios()
        },
        DEFAULT_MARKER_TIMEOUT,
    )
    .expect("guest");
    let marker = outcome.expect_marker(&lab, "the guest");

    // The template became a URL of ironpxe itself, as the guest reached it.
    let cfg = FileRef::parse(&format!("{api}/v1/files/cloud-config")).unwrap();
    let served = BootUrls::http(lab.pxe_addr(), DEFAULT_HTTP_PORT).file(
        API_MAC,
        ironpxe_core::ClientArch::Bios,
        &cfg.id(),
    );
    assert_eq!(
        marker.cmdline,
        format!("console=ttyS0 cfg={served} role=api")
    );
    // And ironpxe serves it: the API's file, streamed through.
    let out = lab
        .run_in(&lab.pxe_ns(), "curl", &["-sf", &served])
        .expect("curl");
    assert!(out.status.success(), "GET {served} failed");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "#cloud-config\nhostname: node-07\n"
    );
    outcome
        .guest
        .wait_for_serial(
            "NixOS Automatic Installer for node-07",
            Duration::from_secs(1),
        )
        .expect("the API's message on the console");

    let events = ironpxe.events();
    let mac = API_MAC.to_string();
    let has = |name: &str| {
        events
            .iter()
            .any(|e| e.name == name && e.field("mac") == Some(mac.as_str()))
    };
    assert!(has("api.answer"), "no api.answer event");
    // The API answers at once, so the guest's very first DISCOVER gets the offer,
    // within the one-second lookup wait (firmware would retransmit after 4 s).
    let packets = capture.finish().expect("capture");
    let (discovers, offers) = discovers_and_offers(&packets, API_MAC);
    let discover = discovers
        .first()
        .expect("no DISCOVER from the guest in the capture");
    let offer = offers
        .first()
        .expect("no ProxyDHCP offer to the guest in the capture");
    // Firmware retransmits only after 4 s, so an offer within 1 s answers the first.
    let gap = offer.at.saturating_sub(discover.at);
    println!("first DISCOVER to ProxyDHCP OFFER: {gap:?}");
    assert!(
        gap < Duration::from_secs(1),
        "the first DISCOVER was answered only after {gap:?}"
    );
    assert!(has("http.script"), "no http.script event");
    // The relative initrd URL was fetched from the API server through ironpxe.
    let initrd_size = std::fs::metadata(&initrd).unwrap().len().to_string();
    assert!(
        events
            .iter()
            .any(|e| e.name == "http.file.done" && e.field("bytes") == Some(initrd_size.as_str())),
        "no complete initrd download of {initrd_size} bytes"
    );
    drop(server);
}

#[test]
fn qemu_api_file_tree_boot() {
    let lab = Lab::new("qemu_api_tree").expect("build lab");
    let kernel = ironpxe_lab::kernel().expect("test kernel");
    let initrd = lab.initrd().expect("initrd");
    let tree = lab.tmp_dir().join("pixiecore-api");
    const CMDLINE: &str = "console=ttyS0 init=/nix/store/eee-nixos-system-node-02/init loglevel=4 nixos.install=/nix/store/fff-install-node-02";
    let answer = format!(
        r#"{{"kernel": "file://{}", "initrd": ["file://{}"], "cmdline": "{CMDLINE}", "message": "NixOS Automatic Installer for node-02"}}"#,
        kernel.display(),
        initrd.display()
    );
    write(&tree.join(format!("v1/boot/{TREE_MAC}")), &answer);

    let ironpxe = lab
        .start_ironpxe(&api_args(&lab, &format!("file://{}", tree.display())))
        .expect("start ironpxe");
    let outcome = boot_once(
        &lab,
        GuestConfig {
            mac: Some(TREE_MAC),
            ..GuestConfig::bios()
        },
        DEFAULT_MARKER_TIMEOUT,
    )
    .expect("guest");
    let marker = outcome.expect_marker(&lab, "the guest");
    assert_eq!(marker.cmdline, CMDLINE);
    outcome
        .guest
        .wait_for_serial(
            "NixOS Automatic Installer for node-02",
            Duration::from_secs(1),
        )
        .expect("the message on the console");
    // Read directly: the DHCP request is answered.
    let events = ironpxe.events();
    let first_offer = events.iter().find(|e| e.name == "dhcp.offer");
    assert!(first_offer.is_some(), "no dhcp.offer");
}

/// A small HTTP API in python3: serves `root` like http.server, but answers
/// `/v1/boot/...` only after `delay_s` seconds.
const SLOW_API: &str = r#"
import http.server, sys, time
root, port, delay = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
class H(http.server.SimpleHTTPRequestHandler):
    def __init__(self, *a, **k):
        super().__init__(*a, directory=root, **k)
    def do_GET(self):
        if self.path.startswith("/v1/boot/"):
            time.sleep(delay)
        super().do_GET()
http.server.ThreadingHTTPServer(("127.0.0.1", port), H).serve_forever()
"#;

/// The API takes 3 s, longer than the one-second DHCP wait: the guest's first
/// DISCOVER goes unanswered, the answer is cached, and the firmware's retransmit
/// gets the offer; the guest boots. The guest is OVMF's native PXE, which
/// retransmits after about 4 s, as PXE ROMs do. (iPXE's own DHCP gives ProxyDHCP
/// only about 3 s, DISCOVERs at 0, 1 and 3 s, so an API slower than that misses
/// one iPXE boot attempt; its answer is cached for the next.)
#[test]
fn qemu_api_slower_than_the_wait_boots_on_the_retransmit() {
    const SLOW_MAC: MacAddr = MacAddr([0x52, 0x54, 0x00, 0xa9, 0x00, 0x03]);
    let lab = Lab::new("qemu_api_slow").expect("build lab");
    let kernel = ironpxe_lab::kernel().expect("test kernel");
    let initrd = lab.initrd().expect("initrd");
    let root = lab.tmp_dir().join("slow-api");
    let answer = format!(
        r#"{{"kernel": "file://{}", "initrd": ["file://{}"], "cmdline": "console=ttyS0 role=slow"}}"#,
        kernel.display(),
        initrd.display()
    );
    write(&root.join(format!("v1/boot/{SLOW_MAC}")), &answer);
    let log = std::fs::File::create(lab.out_dir().join("slow-api.log")).unwrap();
    let port = API_PORT + 1;
    let server = Owned(
        Command::new("ip")
            .args(["netns", "exec", &lab.pxe_ns(), "python3", "-c", SLOW_API])
            .arg(&root)
            .arg(port.to_string())
            .arg("3")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("python3 (apt-get install python3)"),
    );
    let api = format!("http://127.0.0.1:{port}");
    // The root answers at once; only boot answers are slow.
    wait_served(&lab, &format!("{api}/"), "the slow API server");
    let mut args = api_args(&lab, &api);
    args[3] = "5s".into(); // --api-request-timeout: longer than the API's 3 s.
    let _ironpxe = lab.start_ironpxe(&args).expect("start ironpxe");
    let capture = capture_dhcp(&lab);
    let outcome = boot_once(
        &lab,
        GuestConfig {
            mac: Some(SLOW_MAC),
            ..GuestConfig::uefi_native_pxe()
        },
        Duration::from_secs(240),
    )
    .expect("guest");
    let marker = outcome.expect_marker(&lab, "the OVMF guest behind a slow API");
    let image = kernel.file_name().unwrap().to_string_lossy().into_owned();
    assert_eq!(
        marker.user_cmdline_for_image(&image),
        "console=ttyS0 role=slow"
    );

    let packets = capture.finish().expect("capture");
    let (discovers, offers) = discovers_and_offers(&packets, SLOW_MAC);
    let first_discover = discovers
        .first()
        .expect("no DISCOVER from the guest in the capture");
    let first_offer = offers.first().expect("no ProxyDHCP offer at all");
    println!(
        "DISCOVERs at {:?} after the first, first ProxyDHCP offer after {:?}",
        discovers
            .iter()
            .map(|d| d.at.saturating_sub(first_discover.at))
            .collect::<Vec<_>>(),
        first_offer.at.saturating_sub(first_discover.at)
    );
    // The first DISCOVER got nothing from ironpxe; a later one did.
    assert!(
        first_offer.at > first_discover.at + Duration::from_secs(1),
        "the first DISCOVER was answered although the API took 3 s"
    );
    assert!(
        discovers.len() >= 2,
        "the offer came without a retransmit: {} DISCOVERs",
        discovers.len()
    );
    drop(server);
}

/// The guest's DISCOVERs, and ironpxe's ProxyDHCP OFFERs to it, in capture order.
fn discovers_and_offers(
    packets: &[CapturedUdp],
    mac: MacAddr,
) -> (Vec<&CapturedUdp>, Vec<&CapturedUdp>) {
    use dhcproto::v4::{Message, MessageType, OptionCode};
    use dhcproto::{Decodable, Decoder};
    let mut discovers = Vec::new();
    let mut offers = Vec::new();
    for p in packets {
        let Ok(m) = Message::decode(&mut Decoder::new(&p.payload)) else {
            continue;
        };
        if m.chaddr().get(..6) != Some(&mac.octets()[..]) {
            continue;
        }
        match m.opts().msg_type() {
            Some(MessageType::Discover) if p.dst.port() == 67 => discovers.push(p),
            Some(MessageType::Offer)
                if p.src.port() == 67
                    && m.yiaddr().is_unspecified()
                    && m.opts().get(OptionCode::ClassIdentifier).is_some() =>
            {
                offers.push(p)
            }
            _ => {}
        }
    }
    (discovers, offers)
}
