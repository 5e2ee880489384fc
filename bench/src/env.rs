//! The benchmark network: a lab with one client namespace, a static client address,
//! extra server addresses in the ironpxe namespace, optional 1 Gbit/s shaping, and
//! the processes the benchmark starts (killed by PID on drop).

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use ironpxe_lab::{Client, Lab};
use sha2::{Digest, Sha256};

pub struct Env {
    pub lab: Lab,
    pub client: Client,
    /// The TFTP root every server serves (mode 0755, files 0644).
    pub root: PathBuf,
    procs: Vec<(String, Child)>,
}

/// The tbf shaping the issue asks for: 1 Gbit/s, 64 KiB burst, 20 ms queue.
pub const SHAPE: &[&str] = &[
    "root", "tbf", "rate", "1gbit", "burst", "64k", "latency", "20ms",
];

impl Env {
    /// A lab without site DHCP (nothing here needs it) and a client namespace at
    /// `10.77.N.50`. With `shape`, both directions of the client's link go through
    /// `tbf rate 1gbit`: the client interface (ACKs) and the bridge port facing it
    /// (DATA).
    pub fn new(name: &str, shape: bool) -> Result<Env> {
        let lab = Lab::builder(name).site_dhcp(false).build()?;
        let client = lab.add_client()?;
        let o = lab.pxe_addr().octets();
        let client_ip = Ipv4Addr::new(o[0], o[1], o[2], 50);
        let root = lab.tmp_dir().join("tftproot");
        std::fs::create_dir_all(&root)?;
        set_mode(&root, 0o755)?;
        let env = Env {
            lab,
            client,
            root,
            procs: Vec::new(),
        };
        env.ip(
            &env.client.ns,
            &[
                "addr",
                "add",
                &format!("{client_ip}/24"),
                "dev",
                &env.client.ifname,
            ],
        )?;
        if shape {
            env.run_ok(&env.client.ns, "tc", &qdisc(&env.client.ifname))?;
            env.run_ok(&env.lab.switch_ns(), "tc", &qdisc(&env.bridge_port()))?;
        }
        Ok(env)
    }

    /// The bridge port (in the switch namespace) whose peer is the client interface.
    pub fn bridge_port(&self) -> String {
        // add_client names them <id>-c<n> (client side) and <id>-vc<n> (bridge side).
        let n = self
            .client
            .ifname
            .rsplit_once("-c")
            .map(|(_, n)| n.to_string())
            .unwrap_or_default();
        format!("{}-vc{n}", self.lab.id())
    }

    /// `10.77.N.<host>` on ironpxe's interface, for another server to listen on.
    pub fn add_server_addr(&self, host: u8) -> Result<Ipv4Addr> {
        let o = self.lab.pxe_addr().octets();
        let addr = Ipv4Addr::new(o[0], o[1], o[2], host);
        self.ip(
            &self.lab.pxe_ns(),
            &[
                "addr",
                "add",
                &format!("{addr}/24"),
                "dev",
                &self.lab.pxe_ifname(),
            ],
        )?;
        Ok(addr)
    }

    fn ip(&self, ns: &str, args: &[&str]) -> Result<()> {
        self.run_ok(ns, "ip", args).map(drop)
    }

    /// Runs a program in `ns` and insists that it succeeds.
    pub fn run_ok(&self, ns: &str, program: &str, args: &[&str]) -> Result<String> {
        let out = self.lab.run_in(ns, program, args)?;
        if !out.status.success() {
            bail!(
                "`{program} {}` in {ns} failed: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Starts a long-running program in `ns`, logging to `<out_dir>/<name>.log`.
    pub fn spawn(
        &mut self,
        name: &str,
        ns: &str,
        program: &Path,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> Result<u32> {
        let log = std::fs::File::create(self.lab.out_dir().join(format!("{name}.log")))?;
        let child = Command::new("ip")
            .args(["netns", "exec", ns])
            .arg(program)
            .args(args)
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("cannot start {}", program.display()))?;
        let pid = child.id();
        self.procs.push((name.to_string(), child));
        Ok(pid)
    }

    /// Fails if a process started with [`Env::spawn`] has exited.
    pub fn check_running(&mut self) -> Result<()> {
        for (name, child) in &mut self.procs {
            if let Some(st) = child.try_wait()? {
                bail!(
                    "{name} exited ({st}); see {}",
                    self.lab.out_dir().join(format!("{name}.log")).display()
                );
            }
        }
        Ok(())
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        for (_, child) in &mut self.procs {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn qdisc(dev: &str) -> Vec<&str> {
    let mut v = vec!["qdisc", "add", "dev", dev];
    v.extend_from_slice(SHAPE);
    v
}

pub fn set_mode(p: &Path, mode: u32) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode))
        .with_context(|| format!("chmod {}", p.display()))
}

/// Writes `len` pseudo-random bytes (xorshift, fixed seed) to `root/name`, mode 0644,
/// and returns their sha256.
pub fn random_file(root: &Path, name: &str, len: usize) -> Result<String> {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let data: Vec<u8> = (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect();
    let p = root.join(name);
    std::fs::write(&p, &data)?;
    set_mode(&p, 0o644)?;
    Ok(sha256_hex(&data))
}

pub fn sha256_hex(data: &[u8]) -> String {
    Sha256::digest(data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

pub fn sha256_file(p: &Path) -> Result<String> {
    Ok(sha256_hex(
        &std::fs::read(p).with_context(|| format!("read {}", p.display()))?,
    ))
}

/// Median of a non-empty slice (mean of the middle two for even lengths).
pub fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    let n = s.len();
    if n == 0 {
        return f64::NAN;
    }
    if n % 2 == 1 {
        s[n / 2]
    } else {
        (s[n / 2 - 1] + s[n / 2]) / 2.0
    }
}

/// Runs `f` until it succeeds or `timeout` passes.
pub fn retry<T>(timeout: Duration, mut f: impl FnMut() -> Result<T>) -> Result<T> {
    let deadline = Instant::now() + timeout;
    loop {
        match f() {
            Ok(v) => return Ok(v),
            Err(e) if Instant::now() >= deadline => return Err(e),
            Err(_) => std::thread::sleep(Duration::from_millis(200)),
        }
    }
}

/// One line about the machine, for the report.
pub fn machine_notes() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|s| s.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    format!(
        "{cpu}, {cores} cores, kernel {}, load average at start {}",
        kernel.trim(),
        load.split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" ")
    )
}

/// First line of `program args` (stdout or stderr), for version notes.
pub fn version_of(program: &str, args: &[&str], env: &[(&str, &str)]) -> String {
    Command::new(program)
        .args(args)
        .envs(env.iter().copied())
        .output()
        .map(|o| {
            let text = if o.stdout.is_empty() {
                o.stderr
            } else {
                o.stdout
            };
            String::from_utf8_lossy(&text)
                .lines()
                .next()
                .unwrap_or("")
                .trim()
                .to_string()
        })
        .unwrap_or_else(|_| "?".into())
}
