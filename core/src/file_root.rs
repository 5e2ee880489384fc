//! Confining the local files a boot source names to one directory tree
//! (`ironpxe api --api-file-root DIR`).
//!
//! A pixiecore-style API may answer with `file://` URLs, and ironpxe then serves
//! whatever local file the answer names that the process can read. That is
//! pixiecore's behaviour and stays the default. [`ConfinedBooter`] wraps a booter so
//! that a local file is served only when its canonical path (every symlink
//! resolved) lies inside a [`FileRoot`]:
//!
//! - when the booter decides to netboot a machine, each local file of the spec
//!   (kernel, initrds, files its command line names) is checked. One outside the
//!   tree turns the answer into [`BootDecision::Ignore`] for that machine, with one
//!   `api.error` event naming the machine and the refused path. The verdict is kept
//!   while the booter keeps giving the same spec, so a DHCP retransmit costs no
//!   file system calls and logs nothing more;
//! - when a file is served, its path is resolved and checked again, and the
//!   resolved path is what is opened, so a symlink changed after the decision
//!   cannot lead out of the tree.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::event::{emit, BootEvent};
use crate::{BootDecision, BootSpec, Booter, ClientArch, FileId, FileRef, MacAddr};

/// Why a file root cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum FileRootError {
    /// The directory cannot be resolved.
    #[error("{path}: {source}")]
    Resolve {
        /// The directory as given.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The path is not a directory.
    #[error("{path}: not a directory")]
    NotDir {
        /// The path as given.
        path: PathBuf,
    },
}

/// A directory tree local files must lie in, held as its canonical path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileRoot {
    root: PathBuf,
}

impl FileRoot {
    /// Resolves `dir` (symlinks included), which must be a directory.
    pub fn open(dir: &Path) -> Result<Self, FileRootError> {
        let root = std::fs::canonicalize(dir).map_err(|source| FileRootError::Resolve {
            path: dir.to_path_buf(),
            source,
        })?;
        if !root.is_dir() {
            return Err(FileRootError::NotDir {
                path: dir.to_path_buf(),
            });
        }
        Ok(FileRoot { root })
    }

    /// The tree's canonical path.
    pub fn path(&self) -> &Path {
        &self.root
    }

    /// The canonical path of `path` when it lies inside the tree; otherwise why not,
    /// naming the path (and what it resolves to, when that differs).
    pub fn check(&self, path: &Path) -> Result<PathBuf, String> {
        let canon = std::fs::canonicalize(path).map_err(|e| format!("{}: {e}", path.display()))?;
        if canon.starts_with(&self.root) {
            return Ok(canon);
        }
        let resolved = if canon == path {
            String::new()
        } else {
            format!(" (it resolves to {})", canon.display())
        };
        Err(format!(
            "{}{resolved} is outside the file root {}",
            path.display(),
            self.root.display()
        ))
    }
}

/// Verdicts kept before the map is cleared (they are recomputed on demand).
const MAX_VERDICTS: usize = 4096;

/// The last spec checked for a machine, and whether its files lie in the tree.
type Verdict = (Arc<BootSpec>, Result<(), String>);

/// A booter whose local files must lie inside a [`FileRoot`]; see the module
/// documentation.
pub struct ConfinedBooter {
    inner: Arc<dyn Booter>,
    root: FileRoot,
    /// Per machine: the last spec checked and its verdict.
    verdicts: Mutex<HashMap<MacAddr, Verdict>>,
}

impl ConfinedBooter {
    /// Wraps `inner`.
    pub fn new(inner: Arc<dyn Booter>, root: FileRoot) -> Self {
        ConfinedBooter {
            inner,
            root,
            verdicts: Mutex::default(),
        }
    }

    /// Whether every local file of `spec` lies in the tree; the first that does not,
    /// otherwise. Logged once per new verdict.
    fn verdict(&self, mac: MacAddr, spec: &Arc<BootSpec>) -> Result<(), String> {
        {
            let v = self.verdicts.lock().unwrap_or_else(|e| e.into_inner());
            if let Some((seen, verdict)) = v.get(&mac) {
                if Arc::ptr_eq(seen, spec) || **seen == **spec {
                    return verdict.clone();
                }
            }
        }
        let verdict = self.check_spec(spec);
        if let Err(reason) = &verdict {
            emit(BootEvent::ApiError {
                mac,
                reason: format!("refused by --api-file-root: {reason}"),
            });
        }
        let mut v = self.verdicts.lock().unwrap_or_else(|e| e.into_inner());
        if v.len() >= MAX_VERDICTS {
            v.clear();
        }
        v.insert(mac, (spec.clone(), verdict.clone()));
        verdict
    }

    fn check_spec(&self, spec: &BootSpec) -> Result<(), String> {
        // The files the command line names are known to the booter by id.
        let named: Vec<FileRef> = crate::template::file_ids(&spec.cmdline)
            .iter()
            .filter_map(|id| self.inner.file(id))
            .collect();
        for f in spec.files().chain(named.iter()) {
            if let FileRef::Local(p) = f {
                self.root.check(p)?;
            }
        }
        Ok(())
    }
}

impl Booter for ConfinedBooter {
    fn decide(&self, mac: MacAddr, arch: ClientArch, wait: Duration) -> BootDecision {
        let d = self.inner.decide(mac, arch, wait);
        let BootDecision::Netboot(spec) = &d else {
            return d;
        };
        match self.verdict(mac, spec) {
            Ok(()) => d,
            Err(reason) => BootDecision::Ignore(format!("refused by --api-file-root: {reason}")),
        }
    }

    fn file(&self, id: &FileId) -> Option<FileRef> {
        match self.inner.file(id)? {
            FileRef::Local(p) => match self.root.check(&p) {
                Ok(canon) => Some(FileRef::Local(canon)),
                Err(reason) => {
                    tracing::debug!(%id, %reason, "file outside the file root not served");
                    None
                }
            },
            remote => Some(remote),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    /// Answers each MAC with its own spec.
    struct PerMac(HashMap<MacAddr, Arc<BootSpec>>, HashMap<FileId, FileRef>);

    impl Booter for PerMac {
        fn decide(&self, mac: MacAddr, _: ClientArch, _: Duration) -> BootDecision {
            match self.0.get(&mac) {
                Some(s) => BootDecision::Netboot(s.clone()),
                None => BootDecision::Ignore("unknown".into()),
            }
        }
        fn file(&self, id: &FileId) -> Option<FileRef> {
            self.1.get(id).cloned()
        }
    }

    fn spec(kernel: &Path, cmdline: String) -> Arc<BootSpec> {
        Arc::new(BootSpec {
            kernel: FileRef::Local(kernel.to_path_buf()),
            initrds: vec![],
            cmdline,
            message: None,
            loader: Default::default(),
        })
    }

    const IN: MacAddr = MacAddr([2, 0, 0, 0, 0, 1]);
    const OUT: MacAddr = MacAddr([2, 0, 0, 0, 0, 2]);
    const LINK: MacAddr = MacAddr([2, 0, 0, 0, 0, 3]);
    const NAMED: MacAddr = MacAddr([2, 0, 0, 0, 0, 4]);

    #[test]
    fn only_files_inside_the_tree_are_booted_and_served() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path().join("root");
        std::fs::create_dir_all(root.join("sub")).unwrap();
        std::fs::write(root.join("sub/vmlinuz"), "k").unwrap();
        std::fs::write(d.path().join("secret"), "s").unwrap();
        symlink(d.path().join("secret"), root.join("escape")).unwrap();
        let inside = root.join("sub/vmlinuz");
        let outside = d.path().join("secret");
        let dotdot = root.join("sub/../../secret");
        let link = root.join("escape");
        let files: HashMap<FileId, FileRef> = [&inside, &outside, &dotdot, &link]
            .iter()
            .map(|p| {
                let f = FileRef::Local(p.to_path_buf());
                (f.id(), f)
            })
            .collect();
        let secret_ref = FileRef::Local(outside.clone());
        let named_cmdline = format!("cfg={}", crate::template::file_marker(&secret_ref.id()));
        let booter = PerMac(
            [
                (IN, spec(&inside, String::new())),
                (OUT, spec(&dotdot, String::new())),
                (LINK, spec(&link, String::new())),
                (NAMED, spec(&inside, named_cmdline)),
            ]
            .into_iter()
            .collect(),
            files,
        );
        let c = ConfinedBooter::new(Arc::new(booter), FileRoot::open(&root).unwrap());
        let decide = |m| c.decide(m, ClientArch::Bios, Duration::ZERO);
        assert!(matches!(decide(IN), BootDecision::Netboot(_)));
        for (mac, path) in [(OUT, &dotdot), (LINK, &link), (NAMED, &outside)] {
            let BootDecision::Ignore(reason) = decide(mac) else {
                panic!("{mac} boots a file outside the root")
            };
            assert!(
                reason.contains(&path.display().to_string()) && reason.contains("outside"),
                "{reason}"
            );
        }
        // The verdict is kept: the same answer again gives the same refusal.
        assert!(matches!(decide(OUT), BootDecision::Ignore(_)));
        assert_eq!(c.verdicts.lock().unwrap().len(), 4);

        let canon_inside = std::fs::canonicalize(&inside).unwrap();
        assert_eq!(
            c.file(&FileRef::Local(inside.clone()).id()),
            Some(FileRef::Local(canon_inside))
        );
        for p in [&outside, &dotdot, &link] {
            assert_eq!(
                c.file(&FileRef::Local(p.to_path_buf()).id()),
                None,
                "{}",
                p.display()
            );
        }
        assert!(FileRoot::open(&d.path().join("missing")).is_err());
        assert!(matches!(
            FileRoot::open(&inside),
            Err(FileRootError::NotDir { .. })
        ));
    }
}
