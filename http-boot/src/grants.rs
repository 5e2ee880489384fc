//! Which machine was given which file: `/_/file` serves an id only to a machine that
//! was given it.
//!
//! A script served to machine M grants M the files it names (kernel, initrds, the
//! files its command line names). A file request from M for an id it holds a grant
//! for is served; for any other id the booter is asked what M boots now, and the
//! file is served only if that spec names it. So a URL handed to M works for M,
//! also after a restart (the booter still names the file) and after a reload that
//! changed M's files (the grant of the script M is running remains), while another
//! machine asking for the same id gets 404.
//!
//! Grants are bounded ([`MAX_GRANTS`]); when full they are dropped all at once,
//! which costs nothing but a booter lookup on the next file request of each machine.

use std::collections::HashSet;
use std::sync::Mutex;

use ironpxe_core::{BootSpec, FileId, MacAddr};

/// Grants kept before they are all dropped.
pub(crate) const MAX_GRANTS: usize = 65_536;

/// The (machine, file) pairs handed out in scripts.
#[derive(Default)]
pub(crate) struct Grants {
    given: Mutex<HashSet<(MacAddr, FileId)>>,
}

impl Grants {
    /// Records that `mac` was given every file of `spec`.
    pub(crate) fn grant(&self, mac: MacAddr, spec: &BootSpec) {
        let ids = spec.file_ids();
        let mut g = self.given.lock().unwrap_or_else(|e| e.into_inner());
        if g.len() + ids.len() > MAX_GRANTS {
            g.clear();
        }
        for id in ids {
            g.insert((mac, id));
        }
    }

    /// Whether `mac` was given `id` in a script.
    pub(crate) fn holds(&self, mac: MacAddr, id: &FileId) -> bool {
        self.given
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains(&(mac, id.clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ironpxe_core::FileRef;

    #[test]
    fn grants_are_per_machine_and_bounded() {
        let a = MacAddr([2, 0, 0, 0, 0, 1]);
        let b = MacAddr([2, 0, 0, 0, 0, 2]);
        let spec = BootSpec {
            kernel: FileRef::parse("/k").unwrap(),
            initrds: vec![FileRef::parse("/i").unwrap()],
            cmdline: String::new(),
            message: None,
            loader: Default::default(),
        };
        let g = Grants::default();
        g.grant(a, &spec);
        assert!(g.holds(a, &spec.kernel.id()));
        assert!(g.holds(a, &spec.initrds[0].id()));
        assert!(!g.holds(b, &spec.kernel.id()));
        for n in 0..(MAX_GRANTS as u32 / 2 + 1) {
            let b = n.to_be_bytes();
            g.grant(MacAddr([4, 0, b[0], b[1], b[2], b[3]]), &spec);
        }
        assert!(g.given.lock().unwrap().len() <= MAX_GRANTS);
    }
}
