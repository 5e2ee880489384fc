//! More network segments: a second bridge with its own DHCP server, the ironpxe
//! namespace attached to it, or a DHCP relay (dnsmasq `--dhcp-relay`) that routes
//! between it and the main segment. And packet captures with tcpdump.
//!
//! ```text
//!   main bridge <id>-br  10.77.N.0/24          segment k bridge <id>-b<k>  10.(77+k).N.0/24
//!   site .1, ironpxe .2, relay .(10+k) ─ <id>-r<k> ns (router + relay) ─ .1
//!                                                  guests on <id>-b<k>, own DHCP at .1
//!                                                  or ironpxe's second NIC at .2
//! ```
//!
//! Everything stays inside the lab's namespaces, as for the main segment.

use std::fs;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::error::{io_err, Error, Result};
use crate::lab::Lab;
use crate::netns::exec_in;
use crate::proc::{LineMode, Proc};
use crate::site::dnsmasq_cmd;

/// `10.(77+k).N` for segment `k` of lab subnet `n` (segment 0 is the main one).
pub fn segment_prefix(k: u8, n: u8) -> String {
    format!("10.{}.{n}", 77 + u16::from(k))
}

/// A second bridge in the switch namespace, from [`Lab::add_segment`].
#[derive(Debug, Clone)]
pub struct Segment {
    /// Segment number, 1 to 9.
    pub index: u8,
    /// Its bridge in the switch namespace; pass it to [`Lab::start_guest_on`].
    pub bridge: String,
    /// The first three octets of its /24, `10.(77+k).N`.
    pub prefix: String,
}

impl Segment {
    /// `prefix.host`.
    pub fn addr(&self, host: u8) -> Ipv4Addr {
        format!("{}.{host}", self.prefix)
            .parse()
            .unwrap_or(Ipv4Addr::UNSPECIFIED)
    }
}

/// A process the lab started for a segment (dnsmasq, tcpdump).
pub struct LabProc {
    proc: Arc<Proc>,
}

impl LabProc {
    /// Its log lines so far.
    pub fn lines(&self) -> Vec<crate::LogLine> {
        self.proc.lines()
    }

    /// Its last log lines, for error messages.
    pub fn tail(&self, n: usize) -> String {
        self.proc.tail(n)
    }

    /// Stops it (by PID).
    pub fn stop(&self) {
        self.proc.kill();
    }
}

/// One UDP datagram seen by a [`Capture`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CapturedUdp {
    /// When it was captured: the pcap record's time since the Unix epoch (microsecond
    /// or nanosecond resolution, as tcpdump wrote it).
    pub at: Duration,
    /// Source.
    pub src: SocketAddrV4,
    /// Destination.
    pub dst: SocketAddrV4,
    /// Payload.
    pub payload: Vec<u8>,
}

/// tcpdump writing a pcap file in one of the lab's namespaces.
pub struct Capture {
    proc: Arc<Proc>,
    /// The pcap file.
    pub file: PathBuf,
}

impl Capture {
    /// Stops tcpdump (SIGTERM, then SIGKILL) so the file is complete, and returns
    /// the IPv4/UDP datagrams in it.
    pub fn finish(&self) -> Result<Vec<CapturedUdp>> {
        // tcpdump -U flushes each packet; a short pause lets the last ones land.
        std::thread::sleep(Duration::from_millis(300));
        let _ = Command::new("kill")
            .args(["-TERM", &self.proc.pid().to_string()])
            .output();
        let deadline = Instant::now() + Duration::from_secs(3);
        while self.proc.is_running() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        self.proc.kill();
        let bytes = fs::read(&self.file).map_err(io_err("read the capture", &self.file))?;
        udp_in_pcap(&bytes)
    }
}

/// Writes the payload of every datagram sent to UDP 67 or 4011 (client requests and
/// relayed requests) to `dir/<prefix>-<nn>-<port>.bin`; returns the paths. These are
/// the raw material of `testdata/dhcp/`.
pub fn save_dhcp_requests(caps: &[CapturedUdp], dir: &Path, prefix: &str) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for (i, c) in caps
        .iter()
        .filter(|c| matches!(c.dst.port(), 67 | 4011))
        .enumerate()
    {
        let path = dir.join(format!("{prefix}-{i:02}-{}.bin", c.dst.port()));
        fs::write(&path, &c.payload).map_err(io_err("write", &path))?;
        out.push(path);
    }
    Ok(out)
}

/// The IPv4/UDP datagrams of a pcap file (Ethernet link type).
pub fn udp_in_pcap(bytes: &[u8]) -> Result<Vec<CapturedUdp>> {
    if bytes.len() < 24 {
        return Err(Error::Invalid(format!(
            "pcap file too short ({} bytes)",
            bytes.len()
        )));
    }
    let magic = [bytes[0], bytes[1], bytes[2], bytes[3]];
    let (le, nanos) = match magic {
        [0xd4, 0xc3, 0xb2, 0xa1] => (true, false),
        [0x4d, 0x3c, 0xb2, 0xa1] => (true, true),
        [0xa1, 0xb2, 0xc3, 0xd4] => (false, false),
        [0xa1, 0xb2, 0x3c, 0x4d] => (false, true),
        _ => {
            return Err(Error::Invalid(format!(
                "not a pcap file (magic {magic:02x?})"
            )))
        }
    };
    let u32_at = |b: &[u8], i: usize| {
        let w = [b[i], b[i + 1], b[i + 2], b[i + 3]];
        if le {
            u32::from_le_bytes(w)
        } else {
            u32::from_be_bytes(w)
        }
    };
    let link = u32_at(bytes, 20);
    if link != 1 {
        return Err(Error::Invalid(format!(
            "pcap link type {link}, expected Ethernet (1)"
        )));
    }
    let mut out = Vec::new();
    let mut i = 24;
    while i + 16 <= bytes.len() {
        let secs = u64::from(u32_at(bytes, i));
        let frac = u32_at(bytes, i + 4);
        let at = Duration::from_secs(secs)
            + if nanos {
                Duration::from_nanos(u64::from(frac))
            } else {
                Duration::from_micros(u64::from(frac))
            };
        let incl = u32_at(bytes, i + 8) as usize;
        let start = i + 16;
        let Some(frame) = bytes.get(start..start + incl) else {
            break;
        };
        i = start + incl;
        if frame.len() < 14 || frame[12..14] != [0x08, 0x00] {
            continue;
        }
        if let Ok(d) = ironpxe_dhcp::nobind::parse_ipv4_udp(&frame[14..]) {
            out.push(CapturedUdp {
                at,
                src: d.src,
                dst: d.dst,
                payload: d.payload.to_vec(),
            });
        }
    }
    Ok(out)
}

impl Lab {
    /// Creates bridge `<id>-b<k>` in the switch namespace: segment `k` (1 to 9),
    /// addresses `10.(77+k).N.0/24`.
    pub fn add_segment(&self, k: u8) -> Result<Segment> {
        self.require_namespaces("a segment")?;
        if !(1..=9).contains(&k) {
            return Err(Error::Invalid(format!("segment number {k} is not 1 to 9")));
        }
        let bridge = format!("{}-b{k}", self.id());
        self.add_bridge(&bridge)?;
        Ok(Segment {
            index: k,
            bridge,
            prefix: segment_prefix(k, self.subnet()),
        })
    }

    /// Connects namespace `ns` to `bridge` with a veth pair whose lab end is
    /// `ifname`, addressed `addr/24`, up.
    fn plug(&self, bridge: &str, port: &str, ns: &str, ifname: &str, addr: Ipv4Addr) -> Result<()> {
        let sw = self.switch_ns();
        self.ip(&[
            "-n", &sw, "link", "add", port, "type", "veth", "peer", "name", ifname, "netns", ns,
        ])?;
        self.ip(&["-n", &sw, "link", "set", port, "master", bridge])?;
        self.ip(&["-n", &sw, "link", "set", port, "up"])?;
        self.ip(&[
            "-n",
            ns,
            "addr",
            "add",
            &format!("{addr}/24"),
            "dev",
            ifname,
        ])?;
        self.ip(&["-n", ns, "link", "set", ifname, "up"])
    }

    /// Gives the ironpxe namespace a second NIC `<id>-p<k>` on the segment, at
    /// `.2`; returns its name.
    pub fn attach_pxe(&self, seg: &Segment) -> Result<String> {
        let ifname = format!("{}-p{}", self.id(), seg.index);
        let port = format!("{}-vq{}", self.id(), seg.index);
        self.plug(&seg.bridge, &port, &self.pxe_ns(), &ifname, seg.addr(2))?;
        Ok(ifname)
    }

    /// Starts a DHCP server of the segment's own, in namespace `<id>-s<k>` at `.1`,
    /// handing out `.100` to `.200`.
    pub fn segment_dhcp(&self, seg: &Segment) -> Result<LabProc> {
        let ns = format!("{}-s{}", self.id(), seg.index);
        let ifname = format!("{}-s{}", self.id(), seg.index);
        self.add_namespace(&ns)?;
        self.plug(
            &seg.bridge,
            &format!("{}-vt{}", self.id(), seg.index),
            &ns,
            &ifname,
            seg.addr(1),
        )?;
        let leases = self
            .tmp_dir()
            .join(format!("seg{}-dnsmasq.leases", seg.index));
        let mut cmd = dnsmasq_cmd(&ns, &ifname);
        cmd.arg(format!(
            "--dhcp-range={p}.100,{p}.200,255.255.255.0,1h",
            p = seg.prefix
        ))
        .arg(format!("--dhcp-leasefile={}", leases.display()));
        self.segment_ra(seg, &ns, &ifname, &mut cmd)?;
        self.start_dnsmasq(&format!("seg{}-dnsmasq", seg.index), cmd)
    }

    /// Adds a router namespace `<id>-r<k>` between the main segment (at
    /// `10.77.N.(10+k)`) and `seg` (at `.1`), running dnsmasq as a DHCP relay that
    /// forwards every request from the segment to each of `servers`. The site and
    /// ironpxe namespaces get a route to the segment through it. Build the lab with
    /// [`crate::LabBuilder::relayed_segment`] so the site server has addresses for
    /// segment 1.
    pub fn add_relay(&self, seg: &Segment, servers: &[Ipv4Addr]) -> Result<LabProc> {
        let k = seg.index;
        let ns = format!("{}-r{k}", self.id());
        let near_if = format!("{}-ra{k}", self.id());
        let far_if = format!("{}-rb{k}", self.id());
        let near = Ipv4Addr::new(10, 77, self.subnet(), 10 + k);
        self.add_namespace(&ns)?;
        self.plug(
            &self.bridge(),
            &format!("{}-vr{k}", self.id()),
            &ns,
            &near_if,
            near,
        )?;
        self.plug(
            &seg.bridge,
            &format!("{}-vf{k}", self.id()),
            &ns,
            &far_if,
            seg.addr(1),
        )?;
        self.sysctl_in(&ns, "net.ipv4.ip_forward", "1")?;
        for other in [self.site_ns(), self.pxe_ns()] {
            self.ip(&[
                "-n",
                &other,
                "route",
                "add",
                &format!("{}.0/24", seg.prefix),
                "via",
                &near.to_string(),
            ])?;
        }
        let mut cmd = dnsmasq_cmd(&ns, &far_if);
        for server in servers {
            cmd.arg(format!("--dhcp-relay={},{server}", seg.addr(1)));
        }
        self.segment_ra(seg, &ns, &far_if, &mut cmd)?;
        self.start_dnsmasq(&format!("relay{k}-dnsmasq"), cmd)
    }

    /// Gives `ifname` in `ns` the segment's `fdXX:N::1/64` and makes dnsmasq send
    /// router advertisements for it, so iPXE does not wait ~16 s for one.
    fn segment_ra(&self, seg: &Segment, ns: &str, ifname: &str, cmd: &mut Command) -> Result<()> {
        let prefix6 = format!("fd{}:{:x}::", 77 + u16::from(seg.index), self.subnet());
        self.ip(&[
            "-n",
            ns,
            "addr",
            "add",
            &format!("{prefix6}1/64"),
            "dev",
            ifname,
            "nodad",
        ])?;
        cmd.arg("--enable-ra")
            .arg(format!("--dhcp-range={prefix6},ra-only"));
        Ok(())
    }

    fn start_dnsmasq(&self, name: &str, cmd: Command) -> Result<LabProc> {
        let log = self.out_dir().join(format!("{name}.log"));
        let proc = self.spawn_proc(name, cmd, &log, LineMode::Plain, None)?;
        let ready = proc
            .log
            .wait_for(Instant::now() + Duration::from_secs(10), |lines| {
                lines
                    .iter()
                    .any(|l| {
                        l.text.contains("DHCP, IP range")
                            || l.text.contains("DHCP relay")
                            || l.text.contains("sockets bound")
                    })
                    .then_some(())
            });
        if ready.is_err() {
            return Err(Error::Startup {
                process: name.to_string(),
                why: "did not start".into(),
                tail: proc.tail(20),
            });
        }
        Ok(LabProc { proc })
    }

    /// Starts tcpdump on `ifname` in namespace `ns`, writing `<out_dir>/<name>.pcap`,
    /// with a pcap `filter` (e.g. `udp`). Returns once tcpdump listens.
    pub fn capture(&self, name: &str, ns: &str, ifname: &str, filter: &str) -> Result<Capture> {
        let file = self.out_dir().join(format!("{name}.pcap"));
        self.require_namespaces("a capture")?;
        let mut cmd = exec_in(ns, crate::preflight::program("tcpdump"));
        // A 32 MiB buffer: a burst of hundreds of packets is not dropped.
        cmd.args([
            "-n",
            "-U",
            "--immediate-mode",
            "-s",
            "0",
            "-B",
            "32768",
            "-i",
        ])
        .arg(ifname)
        .arg("-w")
        .arg(&file)
        .args(filter.split_whitespace());
        let log = self.out_dir().join(format!("{name}.tcpdump.log"));
        let proc = self.spawn_proc(name, cmd, &log, LineMode::Plain, None)?;
        proc.log
            .wait_for(Instant::now() + Duration::from_secs(10), |lines| {
                lines
                    .iter()
                    .any(|l| l.text.contains("listening on"))
                    .then_some(())
            })
            .map_err(|_| Error::Startup {
                process: format!("tcpdump in {ns}"),
                why: "did not start (apt-get install tcpdump)".into(),
                tail: proc.tail(10),
            })?;
        Ok(Capture { proc, file })
    }

    /// Sends each payload as one UDP datagram from `ns` (bound to `ifname`, source
    /// port `src_port`) to `dst`, with python3's socket module.
    pub fn send_udp(
        &self,
        ns: &str,
        ifname: &str,
        src_port: u16,
        dst: SocketAddrV4,
        payloads: &[Vec<u8>],
    ) -> Result<()> {
        let hex: Vec<String> = payloads
            .iter()
            .map(|p| p.iter().map(|b| format!("{b:02x}")).collect())
            .collect();
        let script = format!(
            "import socket,sys\n\
             s=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\n\
             s.setsockopt(socket.SOL_SOCKET,socket.SO_BROADCAST,1)\n\
             s.setsockopt(socket.SOL_SOCKET,socket.SO_BINDTODEVICE,b'{ifname}')\n\
             s.bind(('0.0.0.0',{src_port}))\n\
             for h in sys.argv[1:]:\n    s.sendto(bytes.fromhex(h),('{ip}',{port}))\n",
            ip = dst.ip(),
            port = dst.port()
        );
        let out = exec_in(ns, "python3")
            .args(["-c", &script])
            .args(&hex)
            .output()
            .map_err(|source| Error::Spawn {
                program: format!("python3 in {ns}"),
                hint: Some("apt-get install python3".into()),
                source,
            })?;
        if !out.status.success() {
            return Err(Error::Command {
                command: format!("python3 (sending UDP from {ns})"),
                status: out.status.to_string(),
                stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
                hint: None,
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pcap_udp_extraction() {
        let ip = ironpxe_dhcp::nobind::build_ipv4_udp(
            "10.0.0.1:68".parse().unwrap(),
            "255.255.255.255:67".parse().unwrap(),
            b"dhcp",
        )
        .unwrap();
        let mut frame = vec![0xff; 6];
        frame.extend_from_slice(&[0x52, 0x54, 0, 0, 0, 1, 0x08, 0x00]);
        frame.extend_from_slice(&ip);
        let mut pcap = vec![0xd4, 0xc3, 0xb2, 0xa1, 2, 0, 4, 0];
        pcap.extend_from_slice(&[0; 8]);
        pcap.extend_from_slice(&65535u32.to_le_bytes());
        pcap.extend_from_slice(&1u32.to_le_bytes());
        pcap.extend_from_slice(&[0; 8]);
        pcap.extend_from_slice(&(frame.len() as u32).to_le_bytes());
        pcap.extend_from_slice(&(frame.len() as u32).to_le_bytes());
        pcap.extend_from_slice(&frame);
        let got = udp_in_pcap(&pcap).unwrap();
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].payload, b"dhcp");
        assert_eq!(got[0].dst, "255.255.255.255:67".parse().unwrap());
        // A truncated last record is dropped, not a panic.
        assert!(udp_in_pcap(&pcap[..pcap.len() - 3]).unwrap().is_empty());
        assert!(udp_in_pcap(b"nope").is_err());
    }

    #[test]
    fn names_fit_interface_limit() {
        let id = format!("{}fffff", crate::netns::NAME_PREFIX);
        for suffix in [
            "-b9", "-p9", "-vq9", "-s9", "-vt9", "-r9", "-ra9", "-rb9", "-vr9", "-vf9",
        ] {
            assert!(format!("{id}{suffix}").len() <= 15, "{suffix}");
        }
    }
}
