//! The files GRUB fetches from ironpxe, by [`GrubPath`]: the dispatcher, each
//! machine's configuration (rendered from what the booter decides for it), GRUB's
//! module lists (empty), and the kernels and initrds the configurations name.
//!
//! [`GrubFiles`] answers them for TFTP (it is a [`FileSource`]) and for HTTP (see
//! [`crate::http`]). Kernels and initrds are resolved through the booter
//! ([`Booter::file`]), so only files some boot spec references are served, as on
//! `/_/file`. Local files are opened and read a piece at a time while they are sent
//! (TFTP by block, HTTP by chunk), so no file size raises memory use; remote ones
//! are fetched whole through a [`RemoteFetch`] the binary provides.

use std::fs;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use ironpxe_core::loader::GrubPath;
use ironpxe_core::{BootDecision, Booter, ClientArch, EfiCpu, FileRef};
use ironpxe_tftp::{normalize_path, Content, FileSource, OpenError};

use crate::render::{dispatch_config, machine_config, Answer, MachineConfig};

/// Fetches a remote (http/https) kernel or initrd whole. Called off the async
/// runtime, so it may block.
pub trait RemoteFetch: Send + Sync + 'static {
    /// The file's bytes, or why not.
    fn fetch(&self, url: &url::Url) -> Result<Bytes, String>;
}

/// How long a machine's configuration waits for a booter with a slow source.
pub const DECIDE_WAIT: Duration = Duration::from_secs(5);

/// The GRUB side of ironpxe's TFTP and HTTP servers.
pub struct GrubFiles {
    booter: Arc<dyn Booter>,
    http_port: u16,
    remote: Option<Arc<dyn RemoteFetch>>,
    dispatch: Bytes,
}

impl GrubFiles {
    /// Serves the configurations `booter` decides, with `{{ URL "x" }}` pointing at
    /// ironpxe's HTTP port `http_port`.
    pub fn new(booter: Arc<dyn Booter>, http_port: u16) -> Self {
        GrubFiles {
            booter,
            http_port,
            remote: None,
            dispatch: Bytes::from(dispatch_config()),
        }
    }

    /// Fetches remote kernels and initrds with `remote` (without it they are not
    /// served over TFTP).
    pub fn with_remote(mut self, remote: Arc<dyn RemoteFetch>) -> Self {
        self.remote = Some(remote);
        self
    }

    /// The contents of `path` as GRUB asks for it (one leading `/` allowed), or why
    /// not. A path that is not one of ironpxe's GRUB paths is
    /// [`OpenError::NotFound`]. May block (disk, booter, remote fetch). A local
    /// kernel or initrd comes back open ([`Content::File`]), to be read while it is
    /// sent.
    pub fn open_grub(&self, path: &str) -> Result<Content, OpenError> {
        let name = normalize_path(path)?;
        let parsed = GrubPath::parse(name).ok_or(OpenError::NotFound)?;
        if let Some(quick) = self.quick(&parsed) {
            return Ok(quick.into());
        }
        match parsed {
            GrubPath::Machine { mac, cpu } => {
                let decision = self.booter.decide(mac, arch_of(cpu), DECIDE_WAIT);
                Ok(Bytes::from(self.render(mac, cpu, &decision)).into())
            }
            GrubPath::File { id, .. } => {
                let file = self.booter.file(&id).ok_or(OpenError::NotFound)?;
                self.read(&file)
            }
            GrubPath::Dispatch | GrubPath::ModuleList { .. } => Err(OpenError::NotFound),
        }
    }

    /// What is answered from memory: the dispatcher and the module lists.
    fn quick(&self, path: &GrubPath) -> Option<Bytes> {
        match path {
            GrubPath::Dispatch => Some(self.dispatch.clone()),
            GrubPath::ModuleList { .. } => Some(Bytes::new()),
            _ => None,
        }
    }

    fn render(&self, mac: ironpxe_core::MacAddr, cpu: EfiCpu, decision: &BootDecision) -> String {
        let answer = match decision {
            BootDecision::Netboot(spec) => Answer::Boot(spec),
            BootDecision::Local => Answer::Local,
            BootDecision::Script(_) => {
                Answer::NotBooted("its boot source gives an iPXE script, which GRUB cannot run")
            }
            BootDecision::Ignore(reason) => Answer::NotBooted(reason),
            BootDecision::Pending => Answer::NotBooted("its boot source has not answered yet"),
        };
        let cfg = |answer| MachineConfig {
            mac,
            cpu,
            answer,
            http_port: self.http_port,
        };
        match machine_config(&cfg(answer)) {
            Ok(text) => text,
            Err(e) => {
                let why = format!("its boot spec cannot be booted through GRUB: {e}");
                tracing::warn!(%mac, error = %e, "GRUB configuration refused");
                // NotBooted renders any text.
                machine_config(&cfg(Answer::NotBooted(&why))).unwrap_or_default()
            }
        }
    }

    fn read(&self, file: &FileRef) -> Result<Content, OpenError> {
        match file {
            FileRef::Local(p) => open_local(p),
            FileRef::Remote(url) => match &self.remote {
                Some(r) => r.fetch(url).map(Content::Memory).map_err(OpenError::Io),
                None => Err(OpenError::Io(format!(
                    "{url}: remote files are not fetched for GRUB here"
                ))),
            },
        }
    }
}

/// Opens a local kernel or initrd; only a regular file is served.
fn open_local(path: &Path) -> Result<Content, OpenError> {
    let io = |e: std::io::Error| OpenError::Io(format!("{}: {e}", path.display()));
    let f = fs::File::open(path).map_err(io)?;
    let meta = f.metadata().map_err(io)?;
    if !meta.is_file() {
        return Err(OpenError::Io(format!(
            "{}: not a regular file",
            path.display()
        )));
    }
    Ok(Content::File {
        file: Arc::new(f),
        size: meta.len(),
    })
}

impl FileSource for GrubFiles {
    fn open(&self, path: &str) -> Result<Content, OpenError> {
        self.open_grub(path)
    }

    fn open_nonblocking(&self, path: &str) -> Option<Result<Content, OpenError>> {
        let name = match normalize_path(path) {
            Ok(n) => n,
            Err(e) => return Some(Err(e.into())),
        };
        match GrubPath::parse(name) {
            None => Some(Err(OpenError::NotFound)),
            Some(p) => self.quick(&p).map(|b| Ok(b.into())),
        }
    }
}

/// The option 93 firmware a GRUB on `cpu` most likely booted from; booters get it
/// with the MAC (GRUB's request names only its CPU).
pub fn arch_of(cpu: EfiCpu) -> ClientArch {
    match cpu {
        EfiCpu::X64 => ClientArch::EfiX64,
        EfiCpu::Arm64 => ClientArch::EfiArm64,
    }
}
