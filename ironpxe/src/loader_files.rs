//! Finding the shim and GRUB binaries of the Secure Boot path, and loading them once.
//!
//! Each slot of [`LoaderBinary::ALL`] is filled from its flag (`--shim-x64` ...) or
//! `[loaders]` key when given, else from the first of its default paths that exists
//! (Debian and Ubuntu, then Fedora). A GRUB is inspected ([`ironpxe_grub::inspect`])
//! for its prefix and whether it has the http module, which UEFI HTTP Boot needs.
//! Every binary used is reported, one line each.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use bytes::Bytes;
use ironpxe_core::config::LoaderPaths;
use ironpxe_core::loader::{LoaderBinary, LoaderKind};
use ironpxe_core::{EfiCpu, Loader, LoaderSet};

/// The shim and GRUB binaries in use.
#[derive(Debug, Default)]
pub(crate) struct LoaderFileSet {
    /// What ProxyDHCP may hand out.
    pub set: LoaderSet,
    /// Every binary's bytes under its served name.
    pub files: BTreeMap<String, Bytes>,
    /// One line per binary, for the startup log and `check`.
    pub report: Vec<String>,
    /// Where each slot was looked for when it was not found.
    pub missing: Vec<(LoaderBinary, Vec<PathBuf>)>,
}

impl LoaderFileSet {
    /// Uses `given` paths (flags over `[loaders]`), and the default paths for the
    /// other slots. A given path that cannot be read is an error; a default that is
    /// not there is only missing. `root` prefixes the default paths (tests).
    pub(crate) fn resolve(given: &LoaderPaths, root: &Path) -> Result<Self> {
        let mut out = LoaderFileSet::default();
        for bin in LoaderBinary::ALL {
            let spec = bin.spec();
            let (path, explicit) = match given.get(bin) {
                Some(p) => (p.clone(), true),
                None => {
                    let candidates: Vec<PathBuf> = spec
                        .default_paths
                        .iter()
                        .map(|p| root.join(p.trim_start_matches('/')))
                        .collect();
                    match candidates.iter().find(|p| p.is_file()) {
                        Some(p) => (p.clone(), false),
                        None => {
                            out.missing.push((bin, candidates));
                            continue;
                        }
                    }
                }
            };
            let bytes = std::fs::read(&path).with_context(|| {
                format!(
                    "--{} {}: cannot read the {} binary",
                    spec.flag,
                    path.display(),
                    bin.name()
                )
            })?;
            if bytes.is_empty() {
                bail!("--{} {}: the file is empty", spec.flag, path.display());
            }
            let mut line = format!(
                "{:<10} {} ({}, {} bytes{})",
                bin.name(),
                spec.served_as,
                path.display(),
                bytes.len(),
                if explicit { "" } else { ", found" }
            );
            if spec.kind == LoaderKind::Grub {
                match ironpxe_grub::inspect(&bytes) {
                    Ok(img) => {
                        out.set.set_grub_http(spec.cpu, img.has_http());
                        line.push_str(&format!(
                            ", prefix {}, {}",
                            img.prefix.as_deref().unwrap_or("(none)"),
                            if img.has_http() {
                                "http and tftp"
                            } else {
                                "tftp only: no http module"
                            }
                        ));
                    }
                    Err(e) => line.push_str(&format!(", not readable as GRUB: {e}")),
                }
            }
            out.set.insert(bin);
            out.files
                .insert(spec.served_as.to_string(), Bytes::from(bytes));
            out.report.push(line);
        }
        Ok(out)
    }

    /// Why `loader` cannot be given to any client, if it cannot: no CPU has its whole
    /// chain (shim and GRUB, or GRUB). `None` when at least one CPU has it.
    pub(crate) fn unusable(&self, loader: Loader) -> Option<String> {
        if !loader.uses_grub() {
            return None;
        }
        let mut gaps = Vec::new();
        for cpu in EfiCpu::ALL {
            let arch = ironpxe_grub::files::arch_of(cpu);
            match self.set.first_file(loader, arch) {
                Ok(_) => return None,
                Err(gap) => gaps.push(gap.to_string()),
            }
        }
        let looked: Vec<String> = self
            .missing
            .iter()
            .map(|(b, paths)| {
                let shown: Vec<String> = paths.iter().map(|p| p.display().to_string()).collect();
                format!("{}: {}", b.name(), shown.join(", "))
            })
            .collect();
        Some(format!(
            "loader \"{loader}\" has no binaries for x64 or arm64 clients: {} (looked for {})",
            gaps.join("; "),
            looked.join("; ")
        ))
    }

    /// Lines on what UEFI HTTP Boot clients of GRUB or shim machines cannot get.
    pub(crate) fn http_boot_notes(&self) -> Vec<String> {
        EfiCpu::ALL
            .into_iter()
            .filter(|cpu| {
                self.set.has(LoaderBinary::of(LoaderKind::Grub, *cpu))
                    && !self.set.grub_has_http(*cpu)
            })
            .map(|cpu| ironpxe_core::loader::LoaderGap::GrubWithoutHttp { cpu }.to_string())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tree(files: &[&str]) -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        for f in files {
            let p = d.path().join(f.trim_start_matches('/'));
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(&p, format!("contents of {f}")).unwrap();
        }
        d
    }

    #[test]
    fn finds_debian_paths_and_reports_each() {
        let d = tree(&[
            "/usr/lib/shim/shimx64.efi.signed",
            "/usr/lib/grub/x86_64-efi-signed/grubnetx64.efi.signed",
        ]);
        let s = LoaderFileSet::resolve(&LoaderPaths::default(), d.path()).unwrap();
        assert!(s.set.has(LoaderBinary::ShimX64) && s.set.has(LoaderBinary::GrubX64));
        assert!(!s.set.has(LoaderBinary::ShimArm64));
        assert_eq!(
            s.files.keys().collect::<Vec<_>>(),
            ["grubx64.efi", "shimx64.efi"]
        );
        assert_eq!(s.report.len(), 2);
        assert!(
            s.report[0].starts_with("shim-x64   shimx64.efi ("),
            "{}",
            s.report[0]
        );
        assert!(
            s.report[1].contains("not readable as GRUB"),
            "{}",
            s.report[1]
        );
        assert_eq!(s.unusable(Loader::Shim), None);
        assert_eq!(s.unusable(Loader::Ipxe), None);
        assert_eq!(s.missing.len(), 2);
    }

    #[test]
    fn fedora_paths_and_given_paths() {
        let d = tree(&[
            "/boot/efi/EFI/fedora/shimaa64.efi",
            "/boot/efi/EFI/fedora/grubaa64.efi",
        ]);
        let own = tree(&["grub-http.efi"]);
        let given =
            LoaderPaths::default().with(LoaderBinary::GrubArm64, own.path().join("grub-http.efi"));
        let s = LoaderFileSet::resolve(&given, d.path()).unwrap();
        assert_eq!(&s.files["grubaa64.efi"][..], b"contents of grub-http.efi");
        assert!(s.set.has(LoaderBinary::ShimArm64));
        let bad = LoaderPaths::default().with(LoaderBinary::ShimX64, "/nonexistent/shim.efi");
        let e = LoaderFileSet::resolve(&bad, d.path()).unwrap_err();
        assert!(
            format!("{e:#}").starts_with("--shim-x64 /nonexistent/shim.efi"),
            "{e:#}"
        );
    }

    #[test]
    fn an_unusable_loader_names_what_is_missing() {
        let d = tree(&["/usr/lib/shim/shimx64.efi.signed"]);
        let s = LoaderFileSet::resolve(&LoaderPaths::default(), d.path()).unwrap();
        let why = s.unusable(Loader::Shim).expect("no GRUB: unusable");
        assert!(why.contains("install grub-efi-amd64-signed"), "{why}");
        assert!(why.contains("grubnetx64.efi.signed"), "{why}");
        assert!(s.unusable(Loader::Grub).is_some());
    }
}
