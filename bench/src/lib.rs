//! The ironpxe benchmarks as a library, so integration tests can run them: the lab
//! environment ([`env`]), the servers under test ([`servers`], [`dhcp`]), the clients
//! ([`client`], [`storm`]) and one module per benchmark. The `ironpxe-bench` binary
//! parses flags and calls the `run` function of each module.

pub mod boot;
pub mod client;
pub mod concurrent;
pub mod dhcp;
pub mod env;
pub mod http;
pub mod loss;
pub mod procstat;
pub mod rxtime;
pub mod servers;
pub mod speed;
pub mod storm;
