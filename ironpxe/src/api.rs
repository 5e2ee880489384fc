//! `ironpxe api URL`: pixiecore's API mode. The client itself is the
//! `ironpxe-api` crate.

use std::sync::Arc;

use anyhow::Result;
use ironpxe_api::{ApiBooter, Source};
use tracing::info;

use crate::cli::ApiArgs;

/// `ironpxe api URL`.
pub fn run(args: ApiArgs) -> Result<()> {
    let source = Source::parse(&args.url)?;
    info!(api = %args.url, timeout = ?args.api_request_timeout, "asking the API what each machine boots");
    let booter = Arc::new(ApiBooter::start(source, args.api_request_timeout)?);
    crate::run::serve(&args.server, booter)
}
