//! The files GRUB fetches from ironpxe, by [`GrubPath`]: the dispatcher, each
//! machine's configuration (rendered from what the booter decides for it), GRUB's
//! module lists (empty), and the kernels and initrds the configurations name.
//!
//! [`GrubFiles`] answers them for TFTP (it is a [`FileSource`]) and for HTTP (see
//! [`crate::http`]). Kernels and initrds are resolved through the booter
//! ([`Booter::file`]), so only files some boot spec references are served, as on
//! `/_/file`. Local files are read whole (TFTP sends from memory) and kept in a
//! bounded cache, re-read when they change; remote ones are fetched through a
//! [`RemoteFetch`] the binary provides.

use std::collections::VecDeque;
use std::fs;
use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use ironpxe_core::loader::GrubPath;
use ironpxe_core::{BootDecision, Booter, ClientArch, EfiCpu, FileRef};
use ironpxe_tftp::{normalize_path, FileSource, OpenError};

use crate::render::{dispatch_config, machine_config, Answer, MachineConfig};

/// Fetches a remote (http/https) kernel or initrd whole. Called off the async
/// runtime, so it may block.
pub trait RemoteFetch: Send + Sync + 'static {
    /// The file's bytes, or why not.
    fn fetch(&self, url: &url::Url) -> Result<Bytes, String>;
}

/// How many bytes of local files the cache keeps.
pub const CACHE_BYTES: usize = 256 << 20;

/// How long a machine's configuration waits for a booter with a slow source.
pub const DECIDE_WAIT: Duration = Duration::from_secs(5);

/// The GRUB side of ironpxe's TFTP and HTTP servers.
pub struct GrubFiles {
    booter: Arc<dyn Booter>,
    http_port: u16,
    remote: Option<Arc<dyn RemoteFetch>>,
    cache: Mutex<Cache>,
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
            cache: Mutex::new(Cache::default()),
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
    /// [`OpenError::NotFound`]. May block (disk, booter, remote fetch).
    pub fn open_grub(&self, path: &str) -> Result<Bytes, OpenError> {
        let name = normalize_path(path)?;
        let parsed = GrubPath::parse(name).ok_or(OpenError::NotFound)?;
        if let Some(quick) = self.quick(&parsed) {
            return Ok(quick);
        }
        match parsed {
            GrubPath::Machine { mac, cpu } => {
                let decision = self.booter.decide(mac, arch_of(cpu), DECIDE_WAIT);
                Ok(Bytes::from(self.render(mac, cpu, &decision)))
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

    fn read(&self, file: &FileRef) -> Result<Bytes, OpenError> {
        match file {
            FileRef::Local(p) => self.read_local(p),
            FileRef::Remote(url) => match &self.remote {
                Some(r) => r.fetch(url).map_err(OpenError::Io),
                None => Err(OpenError::Io(format!(
                    "{url}: remote files are not fetched for GRUB here"
                ))),
            },
        }
    }

    fn read_local(&self, path: &Path) -> Result<Bytes, OpenError> {
        let io = |e: std::io::Error| OpenError::Io(format!("{}: {e}", path.display()));
        let mut f = fs::File::open(path).map_err(io)?;
        let meta = f.metadata().map_err(io)?;
        if !meta.is_file() {
            return Err(OpenError::Io(format!(
                "{}: not a regular file",
                path.display()
            )));
        }
        let stamp = Stamp::of(&meta);
        if let Some(b) = self.cache().get(path, stamp) {
            return Ok(b);
        }
        let mut data = Vec::with_capacity(meta.len() as usize);
        f.read_to_end(&mut data).map_err(io)?;
        let bytes = Bytes::from(data);
        self.cache().put(path, stamp, bytes.clone());
        Ok(bytes)
    }

    fn cache(&self) -> std::sync::MutexGuard<'_, Cache> {
        self.cache.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl FileSource for GrubFiles {
    fn open(&self, path: &str) -> Result<Bytes, OpenError> {
        self.open_grub(path)
    }

    fn open_nonblocking(&self, path: &str) -> Option<Result<Bytes, OpenError>> {
        let name = match normalize_path(path) {
            Ok(n) => n,
            Err(e) => return Some(Err(e.into())),
        };
        match GrubPath::parse(name) {
            None => Some(Err(OpenError::NotFound)),
            Some(p) => self.quick(&p).map(Ok),
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

/// The identity of a file's contents on disk.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
struct Stamp {
    len: u64,
    modified: Option<SystemTime>,
    ino: u64,
    dev: u64,
}

impl Stamp {
    fn of(m: &fs::Metadata) -> Stamp {
        Stamp {
            len: m.len(),
            modified: m.modified().ok(),
            ino: m.ino(),
            dev: m.dev(),
        }
    }
}

/// Local kernels and initrds, most recently read last, at most [`CACHE_BYTES`].
#[derive(Default)]
struct Cache {
    entries: VecDeque<(PathBuf, Stamp, Bytes)>,
    bytes: usize,
}

impl Cache {
    fn get(&mut self, path: &Path, stamp: Stamp) -> Option<Bytes> {
        let i = self.entries.iter().position(|(p, _, _)| p == path)?;
        let (p, s, b) = self.entries.remove(i)?;
        if s != stamp {
            self.bytes -= b.len();
            return None;
        }
        let out = b.clone();
        self.entries.push_back((p, s, b));
        Some(out)
    }

    fn put(&mut self, path: &Path, stamp: Stamp, bytes: Bytes) {
        if bytes.len() > CACHE_BYTES {
            return;
        }
        if let Some(i) = self.entries.iter().position(|(p, _, _)| p == path) {
            if let Some((_, _, old)) = self.entries.remove(i) {
                self.bytes -= old.len();
            }
        }
        while self.bytes + bytes.len() > CACHE_BYTES {
            match self.entries.pop_front() {
                Some((_, _, old)) => self.bytes -= old.len(),
                None => break,
            }
        }
        self.bytes += bytes.len();
        self.entries.push_back((path.to_path_buf(), stamp, bytes));
    }
}
