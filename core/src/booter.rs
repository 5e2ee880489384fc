use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use crate::{BootSpec, ClientArch, FileId, FileRef, MacAddr};

/// The answer to "what does this machine boot?".
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BootDecision {
    /// Netboot this spec.
    Netboot(Arc<BootSpec>),
    /// Boot from the next local boot device: ProxyDHCP still answers, so iPXE
    /// starts, and its script then leaves iPXE to the firmware's next boot option
    /// (the reinstall-then-boot-from-disk flow).
    Local,
    /// Serve this iPXE script verbatim (the pixiecore API's `ipxe-script`).
    Script(Arc<str>),
    /// Do not answer this machine at all; the reason is logged.
    Ignore(String),
    /// The booter's source has not answered within the wait it was given. It has been
    /// asked, and its answer is kept: the client's retransmit gets it at once.
    Pending,
}

/// Decides, per machine, what to boot, and resolves served file ids.
///
/// Both methods are required: a wrapper (status, reload) forwards each one, so no
/// layer can silently change how long a caller is prepared to wait.
pub trait Booter: Send + Sync + 'static {
    /// What `mac` (with firmware `arch`) boots.
    ///
    /// `wait` bounds how long the caller lets a booter with a slow source (an API)
    /// block for the answer. `Duration::ZERO` means "answer from what you know now":
    /// such a booter then starts the lookup and returns [`BootDecision::Pending`].
    /// Booters that know every answer locally ignore `wait`. Callers that pass a
    /// non-zero wait run this off the async workers.
    fn decide(&self, mac: MacAddr, arch: ClientArch, wait: Duration) -> BootDecision;

    /// The file behind a served id, if some boot spec references it. Ids that no spec
    /// produced resolve to nothing, so only referenced files are reachable.
    fn file(&self, id: &FileId) -> Option<FileRef>;
}

/// pixiecore's `boot` mode: every PXE client boots the same spec.
pub struct StaticBooter {
    spec: Arc<BootSpec>,
    files: HashMap<FileId, FileRef>,
}

impl StaticBooter {
    /// Serves `spec` to every machine.
    pub fn new(spec: BootSpec) -> Self {
        Self::with_files(spec, Vec::new())
    }

    /// Serves `spec` to every machine, and also `extra` files (those its command
    /// line references through `{{ URL "..." }}`, see [`crate::template`]).
    pub fn with_files(spec: BootSpec, extra: Vec<FileRef>) -> Self {
        let files = spec
            .files()
            .chain(extra.iter())
            .map(|f| (f.id(), f.clone()))
            .collect();
        StaticBooter {
            spec: Arc::new(spec),
            files,
        }
    }
}

/// A booter that can be replaced while running (configuration reload).
///
/// Callers keep one `Arc<SwapBooter>`; [`SwapBooter::swap`] installs a new booter
/// atomically. Files of the booter it replaced stay reachable until the next swap,
/// so a machine that fetched its script just before a reload can still download
/// what that script names. Transfers already running hold their own file handles.
pub struct SwapBooter {
    inner: RwLock<Generations>,
}

struct Generations {
    current: Arc<dyn Booter>,
    previous: Option<Arc<dyn Booter>>,
}

impl SwapBooter {
    /// Starts with `booter`.
    pub fn new(booter: Arc<dyn Booter>) -> Self {
        SwapBooter {
            inner: RwLock::new(Generations {
                current: booter,
                previous: None,
            }),
        }
    }

    /// Installs `booter`; the one it replaces still resolves its files.
    pub fn swap(&self, booter: Arc<dyn Booter>) {
        let mut g = self.inner.write().unwrap_or_else(|e| e.into_inner());
        let old = std::mem::replace(&mut g.current, booter);
        g.previous = Some(old);
    }

    /// The booter in use now.
    pub fn current(&self) -> Arc<dyn Booter> {
        self.inner
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .current
            .clone()
    }
}

impl Booter for SwapBooter {
    fn decide(&self, mac: MacAddr, arch: ClientArch, wait: Duration) -> BootDecision {
        self.current().decide(mac, arch, wait)
    }

    fn file(&self, id: &FileId) -> Option<FileRef> {
        let (cur, prev) = {
            let g = self.inner.read().unwrap_or_else(|e| e.into_inner());
            (g.current.clone(), g.previous.clone())
        };
        cur.file(id).or_else(|| prev.and_then(|p| p.file(id)))
    }
}

impl Booter for StaticBooter {
    fn decide(&self, _mac: MacAddr, _arch: ClientArch, _wait: Duration) -> BootDecision {
        BootDecision::Netboot(self.spec.clone())
    }

    fn file(&self, id: &FileId) -> Option<FileRef> {
        self.files.get(id).cloned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn static_booter_serves_only_its_files() {
        let spec = BootSpec {
            kernel: FileRef::parse("/srv/vmlinuz").unwrap(),
            initrds: vec![FileRef::parse("/srv/initrd").unwrap()],
            cmdline: "console=ttyS0".into(),
            message: None,
            loader: Default::default(),
        };
        let b = StaticBooter::new(spec.clone());
        assert_eq!(b.file(&spec.kernel.id()), Some(spec.kernel.clone()));
        assert_eq!(b.file(&spec.initrds[0].id()), Some(spec.initrds[0].clone()));
        assert_eq!(b.file(&FileRef::parse("/etc/shadow").unwrap().id()), None);
        assert_eq!(b.file(&FileId::from_wire("../../etc/passwd")), None);
        let mac = MacAddr([2, 0, 0, 0, 0, 1]);
        assert!(
            matches!(b.decide(mac, ClientArch::Bios, Duration::ZERO), BootDecision::Netboot(s) if *s == spec)
        );
    }

    #[test]
    fn swap_booter_switches_and_keeps_previous_files_one_generation() {
        let spec = |k: &str| BootSpec {
            kernel: FileRef::parse(k).unwrap(),
            initrds: vec![],
            cmdline: k.into(),
            message: None,
            loader: Default::default(),
        };
        let a = spec("/a");
        let b = spec("/b");
        let c = spec("/c");
        let mac = MacAddr([2, 0, 0, 0, 0, 1]);
        let s = SwapBooter::new(Arc::new(StaticBooter::new(a.clone())));
        assert!(
            matches!(s.decide(mac, ClientArch::Bios, Duration::ZERO), BootDecision::Netboot(x) if x.cmdline == "/a")
        );
        s.swap(Arc::new(StaticBooter::new(b.clone())));
        assert!(
            matches!(s.decide(mac, ClientArch::Bios, Duration::from_secs(1)), BootDecision::Netboot(x) if x.cmdline == "/b")
        );
        assert_eq!(s.file(&a.kernel.id()), Some(a.kernel.clone()));
        assert_eq!(s.file(&b.kernel.id()), Some(b.kernel.clone()));
        s.swap(Arc::new(StaticBooter::new(c.clone())));
        assert_eq!(s.file(&a.kernel.id()), None);
        assert_eq!(s.file(&b.kernel.id()), Some(b.kernel.clone()));
        assert_eq!(s.file(&c.kernel.id()), Some(c.kernel));
    }

    #[test]
    fn static_booter_serves_extra_template_files() {
        let extra = FileRef::parse("/srv/cloud-config").unwrap();
        let b = StaticBooter::with_files(
            BootSpec {
                kernel: FileRef::parse("/k").unwrap(),
                initrds: vec![],
                cmdline: String::new(),
                message: None,
                loader: Default::default(),
            },
            vec![extra.clone()],
        );
        assert_eq!(b.file(&extra.id()), Some(extra));
    }
}
