//! Finding the iPXE binaries ironpxe chainloads, and loading them once.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use bytes::Bytes;
use ironpxe_core::ipxe_role::{IpxeBinaries, IpxeRole, RoleMap};

/// Where distributions install iPXE: Debian and Ubuntu, then Fedora.
pub(crate) const SEARCH_DIRS: &[&str] = &["/usr/lib/ipxe", "/usr/share/ipxe"];

/// Paths given on the command line, by role (the roles of [`IpxeRole::ALL`] with a
/// flag), and the `--ipxe-snponly` switch.
///
/// The x64 iPXE that drives the NIC through the firmware's own driver (SNP,
/// [`IpxeRole::Snponly`]) has no path flag. It is served by name when found next to
/// the other binaries (so `tftp://server/snponly.efi` works), given to UEFI HTTP Boot
/// x64 clients, and with `--ipxe-snponly` also to EFI x64 PXE clients.
#[derive(Default, Debug, Clone)]
pub(crate) struct Overrides {
    pub paths: RoleMap<PathBuf>,
    /// `--ipxe-snponly`: EFI x64 PXE clients get snponly.efi instead of ipxe.efi.
    pub snponly: bool,
}

/// The iPXE binaries in use: which file plays which role, and every file's bytes
/// under its TFTP name.
#[derive(Debug)]
pub(crate) struct IpxeSet {
    pub binaries: IpxeBinaries,
    pub files: BTreeMap<String, Bytes>,
    /// One line per file: role, TFTP name, path, size, for the startup log.
    pub report: Vec<String>,
}

impl IpxeSet {
    /// Uses the given paths; for roles without one, looks in [`SEARCH_DIRS`] unless
    /// any path was given explicitly (then only what was asked for is served).
    pub(crate) fn resolve(over: &Overrides, search_dirs: &[&Path]) -> Result<Self> {
        // A path for a role the search could fill means the operator chose the set.
        // arm64, which distributions do not ship next to the x86 binaries (so it has
        // no default names), does not turn the search off.
        let explicit = over
            .paths
            .iter()
            .any(|(role, _)| !role.spec().default_names.is_empty());
        let mut chosen: Vec<(IpxeRole, &str, PathBuf)> = Vec::new();
        for (role, flag) in IpxeRole::ALL.iter().filter_map(|&r| Some((r, r.flag()?))) {
            if let Some(p) = over.paths.get(role) {
                chosen.push((role, flag, p.clone()));
            } else if !explicit {
                if let Some(p) = find(search_dirs, role.spec().default_names) {
                    chosen.push((role, flag, p));
                }
            }
        }
        if chosen.is_empty() {
            let dirs: Vec<String> = search_dirs
                .iter()
                .map(|d| d.display().to_string())
                .collect();
            bail!(
                "no iPXE binaries found in {}: install your distribution's ipxe package \
                 (Debian: apt-get install ipxe) or pass --ipxe-bios/--ipxe-efi64 FILE",
                dirs.join(" or ")
            );
        }

        let mut set = IpxeSet {
            binaries: IpxeBinaries::default(),
            files: BTreeMap::new(),
            report: Vec::new(),
        };
        for (role, flag, path) in &chosen {
            let name = set
                .add(path)
                .with_context(|| format!("--{flag} {}", path.display()))?;
            set.binaries.insert(*role, name.clone());
            set.report.push(format!(
                "{:<6} {} ({}, {} bytes)",
                role.name(),
                name,
                path.display(),
                set.files[&name].len()
            ));
        }
        let snponly = if explicit && !over.snponly {
            None
        } else {
            find(search_dirs, IpxeRole::Snponly.spec().default_names)
        };
        if over.snponly {
            if over.paths.get(IpxeRole::Efi64).is_some() {
                bail!("--ipxe-snponly and --ipxe-efi64 both choose the EFI x64 binary; use one");
            }
            if snponly.is_none() {
                let dirs: Vec<String> = search_dirs
                    .iter()
                    .map(|d| d.display().to_string())
                    .collect();
                bail!(
                    "--ipxe-snponly: no snponly.efi found in {} (or pass --ipxe-efi64 FILE)",
                    dirs.join(" or ")
                );
            }
        }
        if let Some(p) = snponly {
            let name = set.add(&p)?;
            set.binaries.insert(IpxeRole::Snponly, name.clone());
            if over.snponly {
                set.binaries.insert(IpxeRole::Efi64, name.clone());
            }
            set.report.push(format!(
                "{:<6} {} ({}, {} bytes)",
                if over.snponly { "efi64" } else { "snp" },
                name,
                p.display(),
                set.files[&name].len()
            ));
        }
        Ok(set)
    }

    /// Reads `path` once and registers it under its file name.
    fn add(&mut self, path: &Path) -> Result<String> {
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .map(str::to_string)
            .with_context(|| format!("{} has no usable file name", path.display()))?;
        let bytes = std::fs::read(path)
            .with_context(|| format!("cannot read iPXE binary {}", path.display()))?;
        if bytes.is_empty() {
            bail!("iPXE binary {} is empty", path.display());
        }
        if let Some(existing) = self.files.get(&name) {
            if existing.as_ref() != bytes.as_slice() {
                bail!("two different iPXE binaries are both named {name:?}; rename one");
            }
        }
        self.files.insert(name.clone(), Bytes::from(bytes));
        Ok(name)
    }
}

fn find(dirs: &[&Path], names: &[&str]) -> Option<PathBuf> {
    dirs.iter()
        .flat_map(|d| names.iter().map(move |n| d.join(n)))
        .find(|p| p.is_file())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir_with(files: &[&str]) -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        for f in files {
            std::fs::write(d.path().join(f), format!("contents of {f}")).unwrap();
        }
        d
    }

    #[test]
    fn finds_debian_layout() {
        let d = dir_with(&["undionly.kpxe", "ipxe.efi", "snponly.efi", "ipxe.pxe"]);
        let set = IpxeSet::resolve(&Overrides::default(), &[d.path()]).unwrap();
        assert_eq!(set.binaries.file(IpxeRole::Bios), Some("undionly.kpxe"));
        assert_eq!(set.binaries.file(IpxeRole::Efi64), Some("ipxe.efi"));
        assert_eq!(set.binaries.file(IpxeRole::Ipxe), Some("ipxe.pxe"));
        assert_eq!(set.binaries.file(IpxeRole::Efi32), None);
        assert_eq!(
            set.files.keys().collect::<Vec<_>>(),
            ["ipxe.efi", "ipxe.pxe", "snponly.efi", "undionly.kpxe"]
        );
        assert_eq!(&set.files["ipxe.efi"][..], b"contents of ipxe.efi");
        // snponly.efi goes to UEFI HTTP Boot, ipxe.efi stays the PXE binary.
        assert_eq!(set.binaries.file(IpxeRole::Snponly), Some("snponly.efi"));
        assert_eq!(set.binaries.file(IpxeRole::Arm64), None);
    }

    #[test]
    fn snponly_flag_makes_it_the_efi64_binary() {
        let d = dir_with(&["undionly.kpxe", "ipxe.efi", "snponly.efi"]);
        let over = Overrides {
            snponly: true,
            ..Overrides::default()
        };
        let set = IpxeSet::resolve(&over, &[d.path()]).unwrap();
        assert_eq!(set.binaries.file(IpxeRole::Efi64), Some("snponly.efi"));
        assert_eq!(set.binaries.file(IpxeRole::Snponly), Some("snponly.efi"));
        assert_eq!(set.binaries.file(IpxeRole::Bios), Some("undionly.kpxe"));

        let bare = dir_with(&["undionly.kpxe", "ipxe.efi"]);
        let err = IpxeSet::resolve(&over, &[bare.path()]).unwrap_err();
        assert!(
            format!("{err:#}").starts_with("--ipxe-snponly: no snponly.efi found in"),
            "{err:#}"
        );
        let both = Overrides {
            snponly: true,
            paths: RoleMap::default().with(IpxeRole::Efi64, d.path().join("ipxe.efi")),
        };
        let err = IpxeSet::resolve(&both, &[d.path()]).unwrap_err();
        assert!(format!("{err:#}").contains("use one"), "{err:#}");
    }

    #[test]
    fn arm64_is_added_without_turning_off_the_search() {
        let d = dir_with(&["undionly.kpxe", "ipxe.efi"]);
        let arm = dir_with(&["ipxe-arm64.efi"]);
        let over = Overrides {
            paths: RoleMap::default().with(IpxeRole::Arm64, arm.path().join("ipxe-arm64.efi")),
            ..Overrides::default()
        };
        let set = IpxeSet::resolve(&over, &[d.path()]).unwrap();
        assert_eq!(set.binaries.file(IpxeRole::Arm64), Some("ipxe-arm64.efi"));
        assert_eq!(set.binaries.file(IpxeRole::Bios), Some("undionly.kpxe"));
        assert_eq!(
            &set.files["ipxe-arm64.efi"][..],
            b"contents of ipxe-arm64.efi"
        );
    }

    #[test]
    fn finds_fedora_names_in_a_later_dir() {
        let empty = dir_with(&[]);
        let d = dir_with(&["undionly.kpxe", "ipxe-x86_64.efi"]);
        let set = IpxeSet::resolve(&Overrides::default(), &[empty.path(), d.path()]).unwrap();
        assert_eq!(set.binaries.file(IpxeRole::Efi64), Some("ipxe-x86_64.efi"));
    }

    #[test]
    fn explicit_paths_disable_the_search() {
        let d = dir_with(&["undionly.kpxe", "ipxe.efi", "custom.kpxe"]);
        let over = Overrides {
            paths: RoleMap::default().with(IpxeRole::Bios, d.path().join("custom.kpxe")),
            ..Overrides::default()
        };
        let set = IpxeSet::resolve(&over, &[d.path()]).unwrap();
        assert_eq!(set.binaries.file(IpxeRole::Bios), Some("custom.kpxe"));
        assert_eq!(set.binaries.file(IpxeRole::Efi64), None);
        assert_eq!(set.files.len(), 1);
    }

    #[test]
    fn errors_name_the_problem() {
        let empty = dir_with(&[]);
        let err = IpxeSet::resolve(&Overrides::default(), &[empty.path()]).unwrap_err();
        assert!(
            format!("{err:#}").contains("no iPXE binaries found"),
            "{err:#}"
        );
        let over = Overrides {
            paths: RoleMap::default().with(IpxeRole::Efi64, "/nonexistent/ipxe.efi"),
            ..Overrides::default()
        };
        let err = IpxeSet::resolve(&over, &[empty.path()]).unwrap_err();
        let msg = format!("{err:#}");
        assert!(msg.contains("--ipxe-efi64 /nonexistent/ipxe.efi"), "{msg}");
    }
}
