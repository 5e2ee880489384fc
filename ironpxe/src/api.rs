//! `ironpxe api URL`: pixiecore's API mode. The client itself is the
//! `ironpxe-api` crate.

use std::sync::Arc;

use anyhow::Result;
use ironpxe_api::{ApiBooter, Source};
use ironpxe_core::Booter;
use tracing::info;

use crate::cli::ApiArgs;

/// `ironpxe api URL`: starts the lookup thread and returns the runtime configuration
/// and the booter for [`crate::run::serve`].
pub(crate) fn run(args: ApiArgs) -> Result<(crate::server_config::ServerConfig, Arc<dyn Booter>)> {
    let source = Source::parse(&args.url)?;
    info!(api = %args.url, timeout = ?args.api_request_timeout, "asking the API what each machine boots");
    let booter = Arc::new(ApiBooter::start(source, args.api_request_timeout)?);
    Ok((
        crate::server_config::ServerConfig::from_args(&args.server),
        booter,
    ))
}
