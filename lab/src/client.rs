//! Client namespaces: an ordinary host on the lab bridge, for running DHCP, TFTP and
//! HTTP clients next to the guests.

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use crate::error::{Error, Result};
use crate::lab::Lab;
use crate::netns::exec_in;
use crate::proc::LineMode;

/// A client namespace on the lab bridge, from [`Lab::add_client`].
#[derive(Debug, Clone)]
pub struct Client {
    /// Its namespace.
    pub ns: String,
    /// Its interface inside that namespace.
    pub ifname: String,
    index: u32,
}

impl Lab {
    /// Adds a namespace `<id>-cl<n>` with one interface on the bridge, for running
    /// ordinary network clients next to the guests.
    pub fn add_client(&self) -> Result<Client> {
        self.require_namespaces("a client namespace")?;
        let n = self.next_client_index();
        let ns = format!("{}-cl{n}", self.id());
        let ifname = format!("{}-c{n}", self.id());
        self.add_namespace(&ns)?;
        self.attach_veth(&format!("{}-vc{n}", self.id()), &ns, &ifname)?;
        self.ip(&["-n", &ns, "link", "set", &ifname, "up"])?;
        Ok(Client {
            ns,
            ifname,
            index: n,
        })
    }

    /// The MAC address of a client's interface.
    pub fn client_mac(&self, client: &Client) -> Result<ironpxe_core::MacAddr> {
        let path = format!("/sys/class/net/{}/address", client.ifname);
        let out = self.run_in(&client.ns, "cat", &[&path])?;
        String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .map_err(|e| Error::Invalid(format!("{path} in {}: {e}", client.ns)))
    }

    /// Asks the site server for an address from a client namespace with busybox
    /// udhcpc; returns the address it leased.
    pub fn client_dhcp(&self, client: &Client, timeout: Duration) -> Result<Ipv4Addr> {
        let busybox = crate::assets::busybox_path().ok_or_else(|| {
            Error::Invalid("busybox not found: apt-get install busybox-static".into())
        })?;
        let tries = timeout.as_secs().clamp(2, 60).to_string();
        let mut cmd = exec_in(&client.ns, busybox);
        cmd.args([
            "udhcpc",
            "-f",
            "-q",
            "-n",
            "-T",
            "1",
            "-t",
            &tries,
            "-s",
            "/bin/true",
            "-i",
        ])
        .arg(&client.ifname);
        let log = self
            .out_dir()
            .join(format!("client{}-udhcpc.log", client.index));
        let name = format!("client{}-udhcpc", client.index);
        let proc = self.spawn_proc(&name, cmd, &log, LineMode::Plain, None)?;
        let found = proc.log.wait_for(Instant::now() + timeout, |lines| {
            lines.iter().find_map(|l| parse_udhcpc_lease(&l.text))
        });
        proc.kill();
        found.map_err(|_| Error::Startup {
            process: format!("udhcpc in {}", client.ns),
            why: format!("got no lease within {} s", timeout.as_secs()),
            tail: proc.tail(20),
        })
    }
}

/// `udhcpc: lease of 10.77.5.123 obtained from 10.77.5.1, lease time 3600`.
pub(crate) fn parse_udhcpc_lease(line: &str) -> Option<Ipv4Addr> {
    let rest = &line[line.find("lease of ")? + "lease of ".len()..];
    rest.split_whitespace().next()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn udhcpc_lines() {
        assert_eq!(
            parse_udhcpc_lease(
                "udhcpc: lease of 10.77.5.123 obtained from 10.77.5.1, lease time 3600"
            ),
            Some(Ipv4Addr::new(10, 77, 5, 123))
        );
        assert_eq!(parse_udhcpc_lease("udhcpc: lease of"), None);
    }
}
