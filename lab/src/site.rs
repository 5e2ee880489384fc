//! The site DHCP server: dnsmasq in the site namespace, handing out addresses (and
//! IPv6 router advertisements) the way a site's own DHCP server does next to
//! ironpxe. It never sends boot options; ironpxe's ProxyDHCP does that. With
//! [`crate::LabBuilder::site_next_server`] it names ironpxe as next-server (no boot
//! file), as a site must for Debian's signed GRUB, which takes its TFTP server from
//! the site's DHCPACK.

use std::fs;
use std::net::Ipv4Addr;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::error::{Error, Result};
use crate::lab::Lab;
use crate::netns::exec_in;
use crate::proc::{LineMode, Stop};

impl Lab {
    pub(crate) fn start_site_dhcp(
        &self,
        addresses: bool,
        ra: bool,
        relayed: bool,
        v6: crate::v6::SiteV6,
        next_server: bool,
    ) -> Result<()> {
        let (lo, hi) = self.dhcp_range();
        let leases = self.tmp_dir().join("site-dnsmasq.leases");
        let mut cmd = dnsmasq_cmd(&self.site_ns(), &self.site_ifname());
        if addresses && self.has_ipv4() {
            cmd.arg(format!("--dhcp-range={lo},{hi},255.255.255.0,1h"));
        }
        cmd.arg(format!("--dhcp-leasefile={}", leases.display()));
        if next_server {
            // siaddr = ironpxe, no boot file: what a site serving signed GRUB sets.
            cmd.arg(format!("--dhcp-boot=,,{}", self.pxe_addr()));
        }
        if relayed {
            let far = crate::segments::segment_prefix(1, self.subnet());
            cmd.arg(format!(
                "--dhcp-range=set:seg1,{far}.100,{far}.200,255.255.255.0,1h"
            ))
            .arg(format!("--dhcp-option=tag:seg1,option:router,{far}.1"));
        }
        match v6 {
            crate::v6::SiteV6::RaOnly => {
                if ra {
                    cmd.arg("--enable-ra")
                        .arg(format!("--dhcp-range={},ra-only", self.prefix6()));
                }
            }
            crate::v6::SiteV6::Stateful | crate::v6::SiteV6::StatefulNotIpxe => {
                // A stateful range: dnsmasq's RAs carry the M and O flags, and it
                // hands out addresses over DHCPv6 (never boot options).
                let (lo6, hi6) = self.dhcp6_range();
                cmd.arg("--enable-ra")
                    .arg(format!("--dhcp-range={lo6},{hi6},64,1h"));
                if v6 == crate::v6::SiteV6::StatefulNotIpxe {
                    // Leaves iPXE's DHCPv6 to ironpxe's stateful mode. (On IPv4 this
                    // tag would match iPXE's option 77 too: IPv6-only labs only.)
                    cmd.arg("--dhcp-userclass=set:ipxe,iPXE")
                        .arg("--dhcp-ignore=tag:ipxe");
                }
            }
        }
        let log = self.out_dir().join("site-dnsmasq.log");
        let proc = self.spawn_proc("site-dnsmasq", cmd, &log, LineMode::Plain, None)?;
        *self.inner.site.lock().unwrap_or_else(|e| e.into_inner()) = Some(proc.clone());
        let ready = proc
            .log
            .wait_for(Instant::now() + Duration::from_secs(10), |lines| {
                lines
                    .iter()
                    .any(|l| {
                        l.text.contains("DHCP, IP range")
                            || l.text.contains("DHCPv6, IP range")
                            || l.text.contains("sockets bound")
                            || l.text.contains("router advertisement on")
                    })
                    .then_some(())
            });
        match ready {
            Ok(()) => Ok(()),
            Err(end) => Err(Error::Startup {
                process: "the site dnsmasq".into(),
                why: match end {
                    Stop::Closed => "exited during start-up".into(),
                    Stop::Timeout => "printed no start-up line within 10 s".into(),
                },
                tail: proc.tail(20),
            }),
        }
    }

    /// The site dnsmasq's log lines so far (empty without site DHCP).
    pub fn site_lines(&self) -> Vec<crate::LogLine> {
        self.inner
            .site
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .map(|p| p.lines())
            .unwrap_or_default()
    }

    /// Waits until the site dnsmasq logs a DHCPACK for `mac`; returns the address and
    /// when the line was logged.
    pub fn wait_site_ack(&self, mac: &str, timeout: Duration) -> Result<(Ipv4Addr, Instant)> {
        let site = self
            .inner
            .site
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
            .ok_or_else(|| Error::Invalid("this lab has no site DHCP server".into()))?;
        let mac = mac.to_lowercase();
        site.log
            .wait_for(Instant::now() + timeout, |lines| {
                lines
                    .iter()
                    .find_map(|l| parse_site_ack(&l.text, &mac).map(|ip| (ip, l.at)))
            })
            .map_err(|_| Error::Timeout {
                what: format!("the site dnsmasq sent no DHCPACK to {mac}"),
                timeout,
            })
    }

    /// The site server's lease file: `(mac, address)` pairs.
    pub fn site_leases(&self) -> Vec<(String, Ipv4Addr)> {
        let text =
            fs::read_to_string(self.tmp_dir().join("site-dnsmasq.leases")).unwrap_or_default();
        text.lines()
            .filter_map(|l| {
                let mut f = l.split_whitespace();
                let _expiry = f.next()?;
                let mac = f.next()?.to_string();
                let ip = f.next()?.parse().ok()?;
                Some((mac, ip))
            })
            .collect()
    }
}

/// dnsmasq in `ns` on `ifname` as a lab DHCP server: foreground, no DNS, no
/// config file, no ping delay, logging every DHCP exchange to stdout.
pub(crate) fn dnsmasq_cmd(ns: &str, ifname: &str) -> Command {
    let mut cmd = exec_in(ns, crate::preflight::program("dnsmasq"));
    cmd.args([
        "--keep-in-foreground",
        "--conf-file=/dev/null",
        "--pid-file=",
        "--port=0",
        "--no-resolv",
        "--no-hosts",
        "--no-ping",
        "--user=root",
        "--bind-interfaces",
        "--dhcp-authoritative",
        "--log-dhcp",
        "--log-facility=-",
    ])
    .arg(format!("--interface={ifname}"));
    cmd
}

/// `... DHCPACK(ipxl1a2b3-site) 10.77.5.157 52:54:00:12:34:56 ...` → the address.
pub(crate) fn parse_site_ack(line: &str, mac: &str) -> Option<Ipv4Addr> {
    let pos = line.find("DHCPACK(")?;
    let rest = &line[pos..];
    let mut words = rest.split_whitespace().skip(1);
    let ip = words.next()?.parse().ok()?;
    let m = words.next()?;
    m.eq_ignore_ascii_case(mac).then_some(ip)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn site_ack_lines() {
        let l = "dnsmasq-dhcp[6798]: 4036828789 DHCPACK(ipxl1-site) 10.77.5.157 52:54:00:12:34:56";
        assert_eq!(
            parse_site_ack(l, "52:54:00:12:34:56"),
            Some(Ipv4Addr::new(10, 77, 5, 157))
        );
        assert_eq!(parse_site_ack(l, "52:54:00:12:34:57"), None);
        assert_eq!(parse_site_ack("DHCPACK(", "x"), None);
    }
}
