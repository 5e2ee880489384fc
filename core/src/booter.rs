use std::collections::HashMap;
use std::sync::Arc;

use crate::{BootSpec, ClientArch, FileId, FileRef, MacAddr};

/// The answer to "what does this machine boot?".
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BootDecision {
    /// Netboot this spec.
    Netboot(Arc<BootSpec>),
    /// Do not answer this machine at all; the reason is logged.
    Ignore(String),
}

/// Decides, per machine, what to boot, and resolves served file ids.
///
/// Implementations must answer quickly: the DHCP path calls [`Booter::decide`] while a
/// firmware client is waiting for an offer.
pub trait Booter: Send + Sync + 'static {
    /// What `mac` (with firmware `arch`) boots.
    fn decide(&self, mac: MacAddr, arch: ClientArch) -> BootDecision;

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
        let files = spec.files().map(|f| (f.id(), f.clone())).collect();
        StaticBooter {
            spec: Arc::new(spec),
            files,
        }
    }
}

impl Booter for StaticBooter {
    fn decide(&self, _mac: MacAddr, _arch: ClientArch) -> BootDecision {
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
        };
        let b = StaticBooter::new(spec.clone());
        assert_eq!(b.file(&spec.kernel.id()), Some(spec.kernel.clone()));
        assert_eq!(b.file(&spec.initrds[0].id()), Some(spec.initrds[0].clone()));
        assert_eq!(b.file(&FileRef::parse("/etc/shadow").unwrap().id()), None);
        assert_eq!(b.file(&FileId::from_wire("../../etc/passwd")), None);
        let mac = MacAddr([2, 0, 0, 0, 0, 1]);
        assert!(matches!(b.decide(mac, ClientArch::Bios), BootDecision::Netboot(s) if *s == spec));
    }
}
