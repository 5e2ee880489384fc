//! Reaching a server on the host's side from ironpxe's namespace, without a link.
//!
//! The lab's namespaces have no route out, so an ironpxe there cannot fetch from an
//! API or kernel URL the host can reach. [`Lab::relay_url`] makes one such server
//! reachable under the same URL: a thread inside the ironpxe namespace listens on
//! the server's address and port (on that namespace's loopback device), and every
//! connection it accepts is joined to a connection the host opens to the server. A
//! host name is written to the namespace's own hosts file (`/etc/netns/<ns>/hosts`,
//! which `ip netns exec` puts in place of `/etc/hosts`). Only that one address and
//! port cross; nothing else leaves the lab.

use std::io::{ErrorKind, Write};
use std::net::{IpAddr, Shutdown, SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::Duration;

use crate::error::{io_err, Error, Result};
use crate::lab::{Lab, Network};

/// Where `ip netns exec` finds a namespace's own `/etc` files.
const NETNS_ETC: &str = "/etc/netns";

impl Lab {
    /// Makes the server of `url` (`http://` or `https://`) reachable from the
    /// ironpxe namespace under the same URL. Call it before starting ironpxe (a host
    /// name is resolved through the namespace's hosts file, read at start). Other
    /// URLs, and any URL with user networking, need nothing and are left alone.
    pub fn relay_url(&self, url: &str) -> Result<()> {
        if self.network() == Network::User {
            return Ok(());
        }
        let Ok(parsed) = url::Url::parse(url) else {
            return Ok(());
        };
        if !matches!(parsed.scheme(), "http" | "https") {
            return Ok(());
        }
        let (Some(host), Some(port)) = (parsed.host(), parsed.port_or_known_default()) else {
            return Ok(());
        };
        let (name, literal) = match host {
            url::Host::Domain(d) => (Some(d.to_string()), None),
            url::Host::Ipv4(a) => (None, Some(IpAddr::V4(a))),
            url::Host::Ipv6(a) => (None, Some(IpAddr::V6(a))),
        };
        let key = format!("{host}:{port}");
        {
            let mut relays = self.inner.relays.lock().unwrap_or_else(|e| e.into_inner());
            if relays.contains(&key) {
                return Ok(());
            }
            relays.push(key.clone());
        }
        let target = match literal {
            Some(ip) => SocketAddr::new(ip, port),
            None => {
                let name = name.as_deref().unwrap_or_default();
                let addrs: Vec<SocketAddr> = (name, port)
                    .to_socket_addrs()
                    .map_err(|e| {
                        Error::Invalid(format!("cannot resolve {name} (from {url}): {e}"))
                    })?
                    .collect();
                addrs
                    .iter()
                    .find(|a| a.is_ipv4())
                    .or(addrs.first())
                    .copied()
                    .ok_or_else(|| Error::Invalid(format!("{name} (from {url}) has no address")))?
            }
        };
        let ns = self.pxe_ns();
        let ip = target.ip();
        if !ip.is_loopback() {
            let prefix = if ip.is_ipv4() { 32 } else { 128 };
            let addr = format!("{ip}/{prefix}");
            if let Err(e) = self.ip(&["-n", &ns, "addr", "add", &addr, "dev", "lo"]) {
                if !e.to_string().contains("File exists") {
                    return Err(e);
                }
            }
        }
        if let Some(name) = &name {
            add_host(&ns, ip, name)?;
        }
        let stop = self.inner.relay_stop.clone();
        start(&ns, target, stop).map_err(|e| {
            Error::Invalid(format!(
                "cannot relay {key} into namespace {ns} ({target}): {e}"
            ))
        })
    }
}

/// Adds `ip name` to the namespace's own hosts file, creating it with the usual
/// localhost lines first.
fn add_host(ns: &str, ip: IpAddr, name: &str) -> Result<()> {
    let dir = Path::new(NETNS_ETC).join(ns);
    std::fs::create_dir_all(&dir).map_err(io_err("create", &dir))?;
    let hosts = dir.join("hosts");
    let mut text = std::fs::read_to_string(&hosts)
        .unwrap_or_else(|_| "127.0.0.1\tlocalhost\n::1\tlocalhost\n".to_string());
    text.push_str(&format!("{ip}\t{name}\n"));
    std::fs::File::create(&hosts)
        .and_then(|mut f| f.write_all(text.as_bytes()))
        .map_err(io_err("write", &hosts))
}

/// The namespace's own `/etc` directory, if the lab made one.
pub(crate) fn netns_etc(ns: &str) -> PathBuf {
    Path::new(NETNS_ETC).join(ns)
}

/// Listens on `target`'s address and port inside `ns`, and joins each accepted
/// connection to a new connection to `target` from this namespace. Returns once
/// the listener is bound.
fn start(ns: &str, target: SocketAddr, stop: Arc<AtomicBool>) -> std::io::Result<()> {
    let (bound_tx, bound_rx) = mpsc::channel();
    let (conn_tx, conn_rx) = mpsc::channel::<TcpStream>();
    let file = std::fs::File::open(Path::new("/run/netns").join(ns))?;
    let stop_listener = stop.clone();
    std::thread::Builder::new()
        .name(format!("relay-{ns}"))
        .spawn(move || {
            let listener = nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET)
                .map_err(std::io::Error::from)
                .and_then(|()| TcpListener::bind(target))
                .and_then(|l| l.set_nonblocking(true).map(|()| l));
            let listener = match listener {
                Ok(l) => {
                    let _ = bound_tx.send(Ok(()));
                    l
                }
                Err(e) => {
                    let _ = bound_tx.send(Err(e));
                    return;
                }
            };
            while !stop_listener.load(Ordering::SeqCst) {
                match listener.accept() {
                    Ok((s, _)) => {
                        if s.set_nonblocking(false).is_ok() && conn_tx.send(s).is_err() {
                            return;
                        }
                    }
                    Err(e) if e.kind() == ErrorKind::WouldBlock => {
                        std::thread::sleep(Duration::from_millis(50));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(50)),
                }
            }
        })?;
    bound_rx
        .recv()
        .map_err(|_| std::io::Error::other("the relay thread ended"))??;
    // Connections to the target are opened from this (the host's) namespace.
    std::thread::Builder::new()
        .name("relay-dispatch".into())
        .spawn(move || {
            for inside in conn_rx {
                if stop.load(Ordering::SeqCst) {
                    return;
                }
                let _ = std::thread::Builder::new()
                    .name("relay-conn".into())
                    .spawn(move || join(inside, target));
            }
        })?;
    Ok(())
}

/// Copies both ways between `inside` and a new connection to `target` until
/// either side closes.
fn join(inside: TcpStream, target: SocketAddr) {
    let Ok(outside) = TcpStream::connect_timeout(&target, Duration::from_secs(10)) else {
        let _ = inside.shutdown(Shutdown::Both);
        return;
    };
    let (Ok(mut in_r), Ok(mut out_w)) = (inside.try_clone(), outside.try_clone()) else {
        return;
    };
    let up = std::thread::spawn(move || {
        let _ = std::io::copy(&mut in_r, &mut out_w);
        let _ = out_w.shutdown(Shutdown::Write);
    });
    let (mut out_r, mut in_w) = (outside, inside);
    let _ = std::io::copy(&mut out_r, &mut in_w);
    let _ = in_w.shutdown(Shutdown::Write);
    let _ = up.join();
}
