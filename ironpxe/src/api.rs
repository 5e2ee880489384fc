//! `ironpxe api URL`: pixiecore's API mode. The client itself is the
//! `ironpxe-api` crate.

use std::sync::Arc;

use anyhow::Result;
use ironpxe_api::{ApiBooter, Limits, Source};
use ironpxe_core::Booter;
use tracing::info;

use crate::cli::ApiArgs;

/// `ironpxe api URL`: starts the lookup thread and returns the runtime configuration
/// and the booter for [`crate::run::serve`].
pub(crate) fn run(args: ApiArgs) -> Result<(crate::server_config::ServerConfig, Arc<dyn Booter>)> {
    let source = Source::parse(&args.url)?;
    let limits = Limits {
        rate: args.api_rate,
        mac_interval: args.api_mac_interval,
        negative_ttl: args.api_negative_ttl,
        ..Limits::default()
    };
    info!(
        api = %args.url,
        timeout = ?args.api_request_timeout,
        rate = limits.rate,
        mac_interval = ?limits.mac_interval,
        negative_ttl = ?limits.negative_ttl,
        "asking the API what each machine boots"
    );
    let booter = Arc::new(ApiBooter::start_with(
        source,
        args.api_request_timeout,
        limits,
    )?);
    Ok((
        crate::server_config::ServerConfig::from_args(&args.server),
        booter,
    ))
}
