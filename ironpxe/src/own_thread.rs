//! A protocol server on its own thread with a current-thread runtime, so its receive
//! loop never waits behind HTTP or TFTP work on the main runtime's workers. ProxyDHCP
//! and DHCPv6 run so.

use anyhow::{Context, Result};

/// The thread, waiting for its one job once its sockets are open.
pub(crate) struct OwnThread<J> {
    jobs: std::sync::mpsc::SyncSender<(J, tokio::sync::oneshot::Sender<std::io::Result<()>>)>,
}

impl<J: Send + 'static> OwnThread<J> {
    /// Starts the thread `name` for the server `what` (for messages), opens its
    /// sockets there with `open`, and returns once they are open, or with `open`'s
    /// error. The job given to [`OwnThread::serve`] then runs as `run(runtime,
    /// sockets, job)`.
    pub(crate) fn open<S: 'static>(
        name: &str,
        what: &'static str,
        open: impl FnOnce() -> Result<S> + Send + 'static,
        run: impl FnOnce(&tokio::runtime::Runtime, S, J) -> std::io::Result<()> + Send + 'static,
    ) -> Result<Self> {
        let (opened_tx, opened_rx) = std::sync::mpsc::channel::<Result<()>>();
        let (job_tx, job_rx) = std::sync::mpsc::sync_channel(1);
        std::thread::Builder::new()
            .name(name.into())
            .spawn(move || {
                let rt = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt,
                    Err(e) => {
                        let e = anyhow::Error::new(e)
                            .context(format!("cannot start the {what} runtime"));
                        let _ = opened_tx.send(Err(e));
                        return;
                    }
                };
                let sockets = match rt.block_on(async { open() }) {
                    Ok(s) => s,
                    Err(e) => {
                        let _ = opened_tx.send(Err(e));
                        return;
                    }
                };
                let _ = opened_tx.send(Ok(()));
                let Ok((job, done)): Result<(J, tokio::sync::oneshot::Sender<_>), _> =
                    job_rx.recv()
                else {
                    return;
                };
                let _ = done.send(run(&rt, sockets, job));
            })
            .with_context(|| format!("cannot start the {what} thread"))?;
        opened_rx
            .recv()
            .unwrap_or_else(|_| Err(anyhow::anyhow!("the {what} thread ended")))?;
        Ok(OwnThread { jobs: job_tx })
    }

    /// Runs `job` until it ends; the receiver gets its result.
    pub(crate) fn serve(self, job: J) -> tokio::sync::oneshot::Receiver<std::io::Result<()>> {
        let (done_tx, done_rx) = tokio::sync::oneshot::channel();
        // The thread waits for exactly this one job; if it is gone, `done_rx` says so.
        let _ = self.jobs.send((job, done_tx));
        done_rx
    }
}
