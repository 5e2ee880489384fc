use std::cell::RefCell;

use super::*;

/// Records the files it is asked about; paths containing "missing" do not exist.
#[derive(Default)]
struct Fake {
    seen: RefCell<Vec<PathBuf>>,
}

impl Checks for Fake {
    fn file(&self, path: &Path) -> Result<(), String> {
        self.seen.borrow_mut().push(path.to_path_buf());
        if path.to_string_lossy().contains("missing") {
            Err("no such file".into())
        } else {
            Ok(())
        }
    }

    fn spec(&self, spec: &BootSpec) -> Result<(), String> {
        if spec.cmdline.contains("${x}") {
            Err("cmdline: '}' cannot be passed through iPXE".into())
        } else {
            Ok(())
        }
    }
}

fn parse(text: &str) -> Result<Config, ConfigError> {
    Config::parse(text, Path::new("/etc/ironpxe/test.toml"), &Fake::default())
}

fn lines(e: ConfigError) -> Vec<String> {
    e.to_string().lines().map(str::to_string).collect()
}

const GOOD: &str = r#"
[server]
interface = "eth1"
listen_addr = "10.0.0.2"
http_port = 8080
default_profile = "installer"

[ipxe]
bios = "ipxe/undionly.kpxe"

[profiles.installer]
kernel = "/srv/bzImage"
initrd = ["/srv/initrd", "http://cache/extra.img"]
cmdline = "console=ttyS0 loglevel=4"
message = "installer"

[[machines]]
mac = "52:54:00:00:00:01"
name = "node-01"
profile = "installer"
cmdline_append = "nixos.install=/nix/store/abc-install"

[[machines]]
mac = "52-54-00-00-00-02"
name = "node-02"
profile = "installer"
cmdline = "cfg={{ URL \"cfg/node-02.json\" }}"
initrd = []
message = "own"

[[machines]]
mac = "52:54:00:00:00:03"
boot = "local"

[[machines]]
mac = "52:54:00:00:00:04"
boot = "ignore"

[[machines]]
mac = "52:54:00:00:00:05"
kernel = "k"
"#;

fn mac(last: u8) -> MacAddr {
    MacAddr([0x52, 0x54, 0, 0, 0, last])
}

fn spec_of(b: &ConfigBooter, m: MacAddr) -> Arc<BootSpec> {
    match b.decide(m, ClientArch::Bios, std::time::Duration::ZERO) {
        BootDecision::Netboot(s) => s,
        other => panic!("{m}: {other:?}"),
    }
}

#[test]
fn a_good_config_becomes_a_booter() {
    let c = parse(GOOD).unwrap();
    assert_eq!(c.server.interface.as_deref(), Some("eth1"));
    assert_eq!(c.server.listen_addr, Some(Ipv4Addr::new(10, 0, 0, 2)));
    assert_eq!(c.server.http_port, Some(8080));
    assert_eq!(
        c.ipxe.get(IpxeRole::Bios).map(PathBuf::as_path),
        Some(Path::new("/etc/ironpxe/ipxe/undionly.kpxe"))
    );
    let b = &c.booter;

    let s1 = spec_of(b, mac(1));
    assert_eq!(s1.kernel, FileRef::Local("/srv/bzImage".into()));
    assert_eq!(s1.initrds.len(), 2);
    assert_eq!(
        s1.cmdline,
        "console=ttyS0 loglevel=4 nixos.install=/nix/store/abc-install"
    );
    assert_eq!(s1.message.as_deref(), Some("installer"));

    // Own fields override the profile's: cmdline, initrd (even empty), message.
    let s2 = spec_of(b, mac(2));
    let cfg = FileRef::Local("/etc/ironpxe/cfg/node-02.json".into());
    assert_eq!(s2.cmdline, format!("cfg=\0{}\0", cfg.id()));
    assert!(s2.initrds.is_empty());
    assert_eq!(s2.message.as_deref(), Some("own"));
    // Files named in templates are served; relative paths are relative to the file.
    assert_eq!(b.file(&cfg.id()), Some(cfg));
    assert_eq!(
        b.file(&s1.initrds[1].id()),
        Some(FileRef::parse("http://cache/extra.img").unwrap())
    );
    assert_eq!(b.file(&FileRef::parse("/etc/shadow").unwrap().id()), None);

    assert_eq!(
        b.decide(mac(3), ClientArch::EfiX64, std::time::Duration::ZERO),
        BootDecision::Local
    );
    assert!(matches!(
        b.decide(mac(4), ClientArch::Bios, std::time::Duration::ZERO),
        BootDecision::Ignore(_)
    ));
    let s5 = spec_of(b, mac(5));
    assert_eq!(s5.kernel, FileRef::Local("/etc/ironpxe/k".into()));
    assert_eq!(s5.cmdline, "");
    assert_eq!(s5.message, None);
    // Unknown MACs get the default profile.
    assert_eq!(spec_of(b, mac(99)).cmdline, "console=ttyS0 loglevel=4");
}

#[test]
fn unknown_macs_are_ignored_without_a_default_profile() {
    let c = parse(&GOOD.replace("default_profile = \"installer\"", "")).unwrap();
    match c
        .booter
        .decide(mac(99), ClientArch::Bios, std::time::Duration::ZERO)
    {
        BootDecision::Ignore(r) => assert!(r.contains("no server.default_profile"), "{r}"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn every_problem_is_reported_with_line_and_key() {
    let text = r#"[server]
default_profile = "nope"
listen_addr = "10.0.0.300"

[ipxe]
efi64 = "/missing/ipxe.efi"

[profiles.p]
kernel = "/missing/bzImage"
initrd = ["/ok/initrd", "ftp://x/y"]
cmdline = "a=${x}"

[[machines]]
mac = "52:54:00:00:00:zz"
profile = "p"

[[machines]]
mac = "52:54:00:00:00:01"
profile = "q"

[[machines]]
mac = "52:54:00:00:00:01"
kernel = "/k"
cmdline = """
one
two"""

[[machines]]
mac = "52:54:00:00:00:02"
boot = "pxe"

[[machines]]
mac = "52:54:00:00:00:03"
cmdline = "{{ URL \"/missing/cfg\" }}"
"#;
    let e = parse(text).unwrap_err();
    let got = lines(e);
    let want = [
        "/etc/ironpxe/test.toml:2: server.default_profile: unknown profile \"nope\" (defined: p)",
        "/etc/ironpxe/test.toml:3: server.listen_addr: \"10.0.0.300\" is not an IPv4 address",
        "/etc/ironpxe/test.toml:6: ipxe.efi64: iPXE binary /missing/ipxe.efi: no such file",
        "/etc/ironpxe/test.toml:9: profiles.p.kernel: /missing/bzImage: no such file",
        "/etc/ironpxe/test.toml:10: profiles.p.initrd[1]: \"ftp://x/y\": unsupported URL scheme \"ftp\" (use a local path, file://, http:// or https://)",
        "/etc/ironpxe/test.toml:11: profiles.p: cmdline: '}' cannot be passed through iPXE",
        "/etc/ironpxe/test.toml:14: machines[0].mac: invalid MAC address \"52:54:00:00:00:zz\": expected six hex octets like aa:bb:cc:dd:ee:ff",
        "/etc/ironpxe/test.toml:19: machines[1].profile: unknown profile \"q\" (defined: p)",
        "/etc/ironpxe/test.toml:22: machines[2].mac: duplicate MAC 52:54:00:00:00:01: also at line 18",
        "/etc/ironpxe/test.toml:24: machines[2].cmdline: contains a line break at byte 3; a kernel command line is one line (use spaces; in a TOML \"\"\" string end lines with \\)",
        "/etc/ironpxe/test.toml:30: machines[3].boot: \"pxe\" is not one of \"netboot\", \"local\", \"ignore\"",
        "/etc/ironpxe/test.toml:33: machines[4]: netboot machine without a kernel: set kernel or profile",
        "/etc/ironpxe/test.toml:34: machines[4].cmdline: cmdline template at byte 0: \"/missing/cfg\": /missing/cfg: no such file",
    ];
    assert_eq!(got, want, "\n{}", got.join("\n"));
}

#[test]
fn toml_mistakes_name_the_line_and_key() {
    let e = parse(
        "[server]\nhttp_port = 80\n\n[[machines]]\nmac = \"52:54:00:00:00:01\"\nkernal = \"/k\"\n",
    )
    .unwrap_err();
    let got = lines(e);
    assert_eq!(got.len(), 1, "{got:?}");
    assert!(
        got[0].starts_with("/etc/ironpxe/test.toml:6: kernal: unknown field `kernal`"),
        "{got:?}"
    );
    let e = parse("[ipxe]\nefi64 = \"/e\"\nsnponly = \"/s\"\n").unwrap_err();
    assert_eq!(
        lines(e),
        ["/etc/ironpxe/test.toml:3: ipxe.snponly: unknown key, expected one of bios, efi32, efi64, ipxe, arm64"]
    );
    let e = parse("[server]\nhttp_port = \"eighty\"\n").unwrap_err();
    let got = lines(e);
    assert!(got[0].starts_with("/etc/ironpxe/test.toml:2: "), "{got:?}");
    assert!(got[0].contains("u16"), "{got:?}");
    let e = parse("[server\n").unwrap_err();
    assert!(lines(e)[0].starts_with("/etc/ironpxe/test.toml:1: toml: "));
    let e = parse("[[machines]]\nname = \"x\"\n").unwrap_err();
    assert!(lines(e)[0].contains("missing field `mac`"));
}

#[test]
fn newlines_and_nul_in_text_are_refused_clearly() {
    let e =
        parse("[[machines]]\nmac = \"52:54:00:00:00:01\"\nkernel = \"/k\"\ncmdline = \"a\\nb\"\n")
            .unwrap_err();
    assert_eq!(
        lines(e),
        ["/etc/ironpxe/test.toml:4: machines[0].cmdline: contains a line break at byte 1; a kernel command line is one line (use spaces; in a TOML \"\"\" string end lines with \\)"]
    );
    let e = parse(
        "[[machines]]\nmac = \"52:54:00:00:00:01\"\nkernel = \"/k\"\ncmdline_append = \"a\\rb\"\n",
    )
    .unwrap_err();
    assert!(lines(e)[0].contains("machines[0].cmdline_append: contains a line break"));
    let e = parse(
        "[[machines]]\nmac = \"52:54:00:00:00:01\"\nkernel = \"/k\"\nmessage = \"a\\u0000b\"\n",
    )
    .unwrap_err();
    assert_eq!(
        lines(e),
        ["/etc/ironpxe/test.toml:4: machines[0].message: contains NUL at byte 1"]
    );
    // A message may span lines: it is printed, not passed to the kernel.
    let c =
        parse("[[machines]]\nmac = \"52:54:00:00:00:01\"\nkernel = \"/k\"\nmessage = \"a\\nb\"\n")
            .unwrap();
    assert_eq!(spec_of(&c.booter, mac(1)).message.as_deref(), Some("a\nb"));
}

/// The documented example: the seed's cluster (1 manager, 3 storage, 16 compute).
#[test]
fn the_cluster_example_parses() {
    let text = include_str!("../../../examples/cluster.toml");
    let fake = Fake::default();
    let c = Config::parse(text, Path::new("examples/cluster.toml"), &fake).unwrap();
    let b = &c.booter;
    let machines: Vec<_> = b.machines().collect();
    assert_eq!(machines.len(), 20);
    let names: Vec<String> = machines
        .iter()
        .filter_map(|(_, m)| m.name.clone())
        .collect();
    assert_eq!(names.iter().filter(|n| n.starts_with("manager")).count(), 1);
    assert_eq!(
        names.iter().filter(|n| n.starts_with("storage-")).count(),
        3
    );
    assert_eq!(names.iter().filter(|n| n.starts_with("node-")).count(), 16);
    // Every netbooting node installs itself: init= and nixos.install= of its own.
    let mut installs = std::collections::HashSet::new();
    for (m, machine) in &machines {
        if let MachineBoot::Netboot(spec) = &machine.boot {
            assert!(
                spec.cmdline.contains(" init=/nix/store/"),
                "{m}: {}",
                spec.cmdline
            );
            let install = spec
                .cmdline
                .split(' ')
                .find(|w| w.starts_with("nixos.install=/nix/store/"))
                .unwrap_or_else(|| panic!("{m}: no nixos.install= in {}", spec.cmdline));
            assert!(
                installs.insert(install.to_string()),
                "{m}: shared {install}"
            );
            assert!(spec.message.as_deref().unwrap_or("").contains("NixOS"));
            assert!(matches!(spec.kernel, FileRef::Local(ref p) if p.starts_with("/nix/store")));
        }
    }
    assert_eq!(
        installs.len(),
        18,
        "manager is ignored, node-15 boots locally"
    );
    // Every file it names is checked (they live in the cluster's /nix/store).
    assert!(fake
        .seen
        .borrow()
        .iter()
        .all(|p| p.starts_with("/nix/store")));
    assert_eq!(b.default_spec(), None);
    assert!(matches!(
        b.decide(
            MacAddr([2, 0, 0, 0, 0, 9]),
            ClientArch::Bios,
            std::time::Duration::ZERO
        ),
        BootDecision::Ignore(_)
    ));
}

#[test]
fn server_ports_and_shutdown_timeout() {
    let c = parse("[server]\nstatus_port = 8081\nshutdown_timeout = \"1m30s\"\n").unwrap();
    assert_eq!(c.server.status_port, Some(8081));
    assert_eq!(c.server.http_port, None);
    assert_eq!(
        c.server.shutdown_timeout,
        Some(std::time::Duration::from_secs(90))
    );
    let c = parse("[server]\nhttp_port = 8080\n").unwrap();
    assert_eq!(c.server.shutdown_timeout, None);
    assert_eq!(c.server.http_max_connections, None);

    let e = parse("[server]\nhttp_port = 0\nstatus_port = 0\nshutdown_timeout = \"soon\"\n")
        .unwrap_err();
    assert_eq!(
        lines(e),
        [
            "/etc/ironpxe/test.toml:2: server.http_port: port 0 is not a port",
            "/etc/ironpxe/test.toml:3: server.status_port: port 0 is not a port",
            "/etc/ironpxe/test.toml:4: server.shutdown_timeout: invalid duration \"soon\": use e.g. 5s, 500ms or 1m30s",
        ]
    );
}

#[test]
fn http_connection_caps() {
    let c = parse("[server]\nhttp_max_connections = 4096\nhttp_max_connections_per_addr = 32\n")
        .unwrap();
    assert_eq!(c.server.http_max_connections, Some(4096));
    assert_eq!(c.server.status_addr, None);
    assert_eq!(c.server.http_max_connections_per_addr, Some(32));
    let e = parse("[server]\nhttp_max_connections = 0\nhttp_max_connections_per_addr = -3\n")
        .unwrap_err();
    assert_eq!(
        lines(e),
        [
            "/etc/ironpxe/test.toml:2: server.http_max_connections: 0 is not a positive number",
            "/etc/ironpxe/test.toml:3: server.http_max_connections_per_addr: -3 is not a positive number",
        ]
    );
}

#[test]
fn status_addr() {
    let c = parse("[server]\nstatus_port = 9090\nstatus_addr = \"192.168.1.2\"\n").unwrap();
    assert_eq!(
        c.server.status_addr,
        Some(std::net::Ipv4Addr::new(192, 168, 1, 2))
    );
    let e = parse("[server]\nstatus_addr = \"mgmt\"\n").unwrap_err();
    assert_eq!(
        lines(e),
        ["/etc/ironpxe/test.toml:2: server.status_addr: \"mgmt\" is not an IPv4 address"]
    );
}

#[test]
fn a_toml_syntax_error_is_one_line() {
    // Found by the config_parse fuzz target: the TOML parser's message spans lines.
    let e = parse("[server\nhttp_port = 80\n").unwrap_err();
    let text = e.to_string();
    assert_eq!(text.lines().count(), 1, "{text:?}");
    assert!(
        text.starts_with("/etc/ironpxe/test.toml:1: toml: invalid table header; expected"),
        "{text}"
    );
}

#[test]
fn a_toml_error_without_a_message_still_says_what_is_wrong() {
    // Found by the config_parse fuzz target: for a control character in a comment
    // the TOML parser gives an empty message.
    let e = parse("# a comment\r\0 more\n").unwrap_err();
    assert_eq!(
        lines(e),
        ["/etc/ironpxe/test.toml:1: toml: invalid TOML: unexpected '\\r'"]
    );
}

#[test]
fn server_user_is_a_name() {
    let c = parse("[server]\nuser = \"ironpxe\"\n").unwrap();
    assert_eq!(c.server.user.as_deref(), Some("ironpxe"));
    assert_eq!(parse("[server]\n").unwrap().server.user, None);
    let e = parse("[server]\nuser = \"\"\n").unwrap_err();
    assert_eq!(
        lines(e),
        ["/etc/ironpxe/test.toml:2: server.user: \"\" is not a user name"]
    );
    let e = parse("[server]\nuser = \"a b\"\n").unwrap_err();
    assert_eq!(
        lines(e),
        ["/etc/ironpxe/test.toml:2: server.user: \"a b\" is not a user name"]
    );
}

#[test]
fn server_tftp_per_address() {
    let c = parse("[server]\ntftp_per_address = 2\n").unwrap();
    assert_eq!(c.server.tftp_per_address, Some(2));
    assert_eq!(parse("").unwrap().server.tftp_per_address, None);
    let e = parse("[server]\ntftp_per_address = 0\n").unwrap_err();
    assert_eq!(
        lines(e),
        ["/etc/ironpxe/test.toml:2: server.tftp_per_address: must be at least 1"]
    );
}

/// Knows one loader binary set: a shim and GRUB for x64 only, unless `[loaders]`
/// names more.
struct LoaderChecks;

impl Checks for LoaderChecks {
    fn loader(&self, loader: Loader, paths: &LoaderPaths) -> Result<(), String> {
        let has = |b: LoaderBinary| b == LoaderBinary::GrubX64 || paths.get(b).is_some();
        let ok = match loader {
            Loader::Shim => has(LoaderBinary::ShimX64) || has(LoaderBinary::ShimArm64),
            _ => true,
        };
        if ok {
            Ok(())
        } else {
            Err(format!("loader {loader:?}: no shim binary found"))
        }
    }
}

#[test]
fn loaders_per_profile_and_machine() {
    let text = r#"
[loaders]
grub_arm64 = "efi/grubaa64-http.efi"

[profiles.sb]
kernel = "/srv/bzImage"
loader = "shim"

[profiles.plain]
kernel = "/srv/bzImage"

[[machines]]
mac = "52:54:00:00:00:01"
profile = "sb"

[[machines]]
mac = "52:54:00:00:00:02"
profile = "sb"
loader = "ipxe"

[[machines]]
mac = "52:54:00:00:00:03"
profile = "plain"
loader = "grub"

[[machines]]
mac = "52:54:00:00:00:04"
profile = "plain"
"#;
    // Every loader is there for Fake (no `loader` check).
    let c = parse(text).unwrap();
    assert_eq!(spec_of(&c.booter, mac(1)).loader, Loader::Shim);
    assert_eq!(spec_of(&c.booter, mac(2)).loader, Loader::Ipxe);
    assert_eq!(spec_of(&c.booter, mac(3)).loader, Loader::Grub);
    assert_eq!(spec_of(&c.booter, mac(4)).loader, Loader::Ipxe);
    assert_eq!(c.loaders_used, [Loader::Shim, Loader::Grub]);
    assert_eq!(
        c.loaders.get(LoaderBinary::GrubArm64),
        Some(&PathBuf::from("/etc/ironpxe/efi/grubaa64-http.efi"))
    );
    assert_eq!(c.loaders.get(LoaderBinary::ShimX64), None);
}

#[test]
fn loader_problems_name_the_line_and_key() {
    let text = r#"
[loaders]
shim_x86 = "/srv/shim.efi"
grub_x64 = "/srv/missing/grubx64.efi"

[profiles.sb]
kernel = "/srv/bzImage"
loader = "Shim"

[[machines]]
mac = "52:54:00:00:00:01"
profile = "sb"
loader = "pxelinux"
"#;
    assert_eq!(
        lines(parse(text).unwrap_err()),
        [
            "/etc/ironpxe/test.toml:3: loaders.shim_x86: unknown key, expected one of shim_x64, grub_x64, shim_arm64, grub_arm64",
            "/etc/ironpxe/test.toml:4: loaders.grub_x64: grub-x64 binary /srv/missing/grubx64.efi: no such file",
            "/etc/ironpxe/test.toml:8: profiles.sb.loader: unknown loader \"Shim\": expected \"ipxe\", \"grub\" or \"shim\"",
            "/etc/ironpxe/test.toml:13: machines[0].loader: unknown loader \"pxelinux\": expected \"ipxe\", \"grub\" or \"shim\"",
        ]
    );
    // A loader this server cannot give is a problem at its `loader` key.
    let text = "[profiles.sb]\nkernel = \"/k\"\nloader = \"shim\"\n\n[profiles.g]\nkernel = \"/k\"\nloader = \"grub\"\n";
    let e = Config::parse(text, Path::new("/etc/ironpxe/test.toml"), &LoaderChecks).unwrap_err();
    assert_eq!(
        lines(e),
        ["/etc/ironpxe/test.toml:3: profiles.sb.loader: loader Shim: no shim binary found"]
    );
    // ... and none once `[loaders]` names one.
    let text = format!("[loaders]\nshim_arm64 = \"/srv/shimaa64.efi\"\n{text}");
    assert!(Config::parse(&text, Path::new("/etc/ironpxe/test.toml"), &LoaderChecks).is_ok());
}
