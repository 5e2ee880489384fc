//! Files served from a directory (`--tftp-root`), confined to it; small files are
//! cached in memory, large ones streamed from disk.
//!
//! Every request path goes through [`normalize_path`] first (no `..`, absolute paths,
//! NUL or backslashes). The file is then opened relative to the root directory with
//! `openat2(RESOLVE_BENEATH)`, so the kernel refuses any resolution that leaves the
//! root, including through a symlink. Kernels without `openat2` (before 5.6) get a
//! check on the canonical path instead.
//!
//! Each request opens and `fstat`s the file (cheap, and it keeps the confinement
//! check on every request). A file larger than the per-file cache limit
//! ([`DEFAULT_MAX_CACHED_FILE`]) is handed out open, as [`Content::File`]: transfers
//! read it a chunk at a time, so its size never becomes memory. Smaller files are
//! kept in a shared cache keyed by path; their bytes are read from disk only when
//! the file is new to the cache or its device, inode, size or modification time
//! changed. Loads are serialised, so many clients asking for the same file at once
//! cause one read.

use crate::content::Content;
use crate::files::{normalize_path, FileSource, OpenError};
use bytes::Bytes;
use rustix::fs::{Mode, OFlags, ResolveFlags};
use rustix::io::Errno;
use std::collections::HashMap;
use std::fs::File;
use std::io::Read;
use std::os::fd::OwnedFd;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// Default cap on the bytes [`TftpRoot`] keeps in memory: 64 MiB.
pub const DEFAULT_CACHE_BYTES: u64 = 64 << 20;

/// Default size of the largest file [`TftpRoot`] caches: 4 MiB, more than a boot
/// loader (iPXE, shim, GRUB) needs. Larger files are streamed from disk.
pub const DEFAULT_MAX_CACHED_FILE: u64 = 4 << 20;

/// Why a TFTP root cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum RootError {
    /// The directory cannot be opened.
    #[error("cannot open {path}")]
    Open {
        /// The directory given.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The path exists but is not a directory.
    #[error("{0} is not a directory")]
    NotADirectory(PathBuf),
}

/// What identifies one version of a file on disk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Version {
    dev: u64,
    ino: u64,
    size: u64,
    mtime: i64,
    mtime_nsec: i64,
}

impl Version {
    fn of(meta: &std::fs::Metadata) -> Version {
        Version {
            dev: meta.dev(),
            ino: meta.ino(),
            size: meta.size(),
            mtime: meta.mtime(),
            mtime_nsec: meta.mtime_nsec(),
        }
    }
}

#[derive(Debug)]
struct Entry {
    version: Version,
    data: Bytes,
    last_used: u64,
}

#[derive(Debug, Default)]
struct Cache {
    entries: HashMap<String, Entry>,
    bytes: u64,
    tick: u64,
    loads: u64,
}

impl Cache {
    fn get(&mut self, name: &str, version: Version) -> Option<Bytes> {
        self.tick += 1;
        let tick = self.tick;
        let e = self.entries.get_mut(name)?;
        if e.version != version {
            return None;
        }
        e.last_used = tick;
        Some(e.data.clone())
    }

    /// Stores `data`, evicting the least recently used entries to stay under `cap`.
    /// A file larger than `cap` is not stored.
    fn put(&mut self, name: &str, version: Version, data: Bytes, cap: u64) {
        if let Some(old) = self.entries.remove(name) {
            self.bytes -= old.data.len() as u64;
        }
        let len = data.len() as u64;
        if len > cap {
            return;
        }
        while self.bytes + len > cap {
            let Some(victim) = self
                .entries
                .iter()
                .min_by_key(|(_, e)| e.last_used)
                .map(|(k, _)| k.clone())
            else {
                break;
            };
            if let Some(e) = self.entries.remove(&victim) {
                self.bytes -= e.data.len() as u64;
            }
        }
        self.tick += 1;
        self.bytes += len;
        self.entries.insert(
            name.to_string(),
            Entry {
                version,
                data,
                last_used: self.tick,
            },
        );
    }
}

/// A directory served read-only over TFTP. See the [module documentation](self).
#[derive(Debug)]
pub struct TftpRoot {
    dir: OwnedFd,
    path: PathBuf,
    canonical: PathBuf,
    cap: u64,
    max_cached_file: u64,
    cache: Mutex<Cache>,
    /// Held while a file is read from disk, so concurrent misses read it once.
    loading: Mutex<()>,
}

impl TftpRoot {
    /// Opens `path` as the root, keeping at most `cache_bytes` of file contents in
    /// memory ([`DEFAULT_CACHE_BYTES`] is a good default), in files of at most
    /// [`DEFAULT_MAX_CACHED_FILE`] bytes (see [`TftpRoot::with_max_cached_file`]).
    pub fn open(path: impl AsRef<Path>, cache_bytes: u64) -> Result<TftpRoot, RootError> {
        let path = path.as_ref().to_path_buf();
        let err = |source: std::io::Error| RootError::Open {
            path: path.clone(),
            source,
        };
        let canonical = std::fs::canonicalize(&path).map_err(err)?;
        if !canonical.is_dir() {
            return Err(RootError::NotADirectory(path));
        }
        let dir = rustix::fs::open(
            &canonical,
            OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| err(e.into()))?;
        Ok(TftpRoot {
            dir,
            path,
            canonical,
            cap: cache_bytes,
            max_cached_file: DEFAULT_MAX_CACHED_FILE,
            cache: Mutex::new(Cache::default()),
            loading: Mutex::new(()),
        })
    }

    /// Caches only files of at most `bytes`; larger ones are streamed from disk.
    pub fn with_max_cached_file(mut self, bytes: u64) -> TftpRoot {
        self.max_cached_file = bytes;
        self
    }

    /// The directory as given to [`TftpRoot::open`].
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Bytes currently cached.
    pub fn cached_bytes(&self) -> u64 {
        self.lock_cache().bytes
    }

    /// How many times a file was read from disk since the root was opened.
    pub fn disk_loads(&self) -> u64 {
        self.lock_cache().loads
    }

    fn lock_cache(&self) -> std::sync::MutexGuard<'_, Cache> {
        self.cache.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Opens `name` (already normalised) beneath the root.
    fn open_beneath(&self, name: &str) -> Result<File, OpenError> {
        let flags = OFlags::RDONLY | OFlags::CLOEXEC | OFlags::NOCTTY | OFlags::NONBLOCK;
        let resolve = ResolveFlags::BENEATH | ResolveFlags::NO_MAGICLINKS;
        match rustix::fs::openat2(&self.dir, name, flags, Mode::empty(), resolve) {
            Ok(fd) => Ok(File::from(fd)),
            Err(Errno::NOSYS) => self.open_checked(name),
            Err(e) => Err(map_errno(e)),
        }
    }

    /// The fallback without `openat2`: resolve every symlink, then insist the result
    /// is still inside the canonical root. (A rename racing this check could slip
    /// through; `openat2` has no such window.)
    fn open_checked(&self, name: &str) -> Result<File, OpenError> {
        let real = std::fs::canonicalize(self.canonical.join(name)).map_err(map_io)?;
        if !real.starts_with(&self.canonical) {
            return Err(OpenError::AccessViolation(
                "path leaves the TFTP root".into(),
            ));
        }
        std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(OFlags::NONBLOCK.bits() as i32)
            .open(real)
            .map_err(map_io)
    }

    fn read(&self, name: &str, file: File) -> Result<Content, OpenError> {
        let meta = file.metadata().map_err(map_io)?;
        if !meta.is_file() {
            return Err(OpenError::AccessViolation("not a regular file".into()));
        }
        let version = Version::of(&meta);
        if version.size > self.max_cached_file.min(self.cap) {
            return Ok(Content::File {
                file: Arc::new(file),
                size: version.size,
            });
        }
        if let Some(data) = self.lock_cache().get(name, version) {
            return Ok(Content::Memory(data));
        }
        let _loading = self.loading.lock().unwrap_or_else(|e| e.into_inner());
        // Another request may have loaded it while this one waited.
        if let Some(data) = self.lock_cache().get(name, version) {
            return Ok(Content::Memory(data));
        }
        // At most the size checked above, even if the file grows meanwhile.
        let mut buf = Vec::with_capacity(version.size as usize);
        (&file)
            .take(version.size)
            .read_to_end(&mut buf)
            .map_err(map_io)?;
        let data = Bytes::from(buf);
        // The file changed while being read: serve what was read, cache nothing.
        let after = file.metadata().map(|m| Version::of(&m)).ok();
        let mut cache = self.lock_cache();
        cache.loads += 1;
        if after == Some(version) && data.len() as u64 == version.size {
            cache.put(name, version, data.clone(), self.cap);
        }
        Ok(Content::Memory(data))
    }
}

fn map_errno(e: Errno) -> OpenError {
    match e {
        Errno::NOENT | Errno::NOTDIR => OpenError::NotFound,
        Errno::XDEV => OpenError::AccessViolation("path leaves the TFTP root".into()),
        Errno::ACCESS | Errno::PERM => OpenError::AccessViolation("permission denied".into()),
        Errno::LOOP => OpenError::AccessViolation("too many levels of symlinks".into()),
        other => OpenError::Io(std::io::Error::from(other).to_string()),
    }
}

fn map_io(e: std::io::Error) -> OpenError {
    match e.raw_os_error() {
        Some(n) => map_errno(Errno::from_raw_os_error(n)),
        None => OpenError::Io(e.to_string()),
    }
}

impl FileSource for TftpRoot {
    fn open(&self, path: &str) -> Result<Content, OpenError> {
        let name = normalize_path(path)?;
        let file = self.open_beneath(name)?;
        self.read(name, file)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    struct Dirs {
        top: PathBuf,
        root: PathBuf,
    }

    impl Drop for Dirs {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.top);
        }
    }

    /// `top/secret`, `top/root/{a.bin, efi/grubx64.efi}` and symlinks inside root.
    fn dirs(tag: &str) -> Dirs {
        let top = std::env::temp_dir().join(format!("ironpxe-root-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&top);
        let root = top.join("root");
        std::fs::create_dir_all(root.join("efi")).unwrap();
        std::fs::write(top.join("secret"), b"outside").unwrap();
        std::fs::write(root.join("a.bin"), b"alpha").unwrap();
        std::fs::write(root.join("efi/grubx64.efi"), b"grub").unwrap();
        symlink("../secret", root.join("up")).unwrap();
        symlink(top.join("secret"), root.join("abs")).unwrap();
        symlink("../a.bin", root.join("efi/back")).unwrap();
        symlink("efi", root.join("efilink")).unwrap();
        symlink("..", root.join("parent")).unwrap();
        Dirs { top, root }
    }

    /// Every byte of an answer, in memory or on disk.
    fn all(c: Content) -> Bytes {
        match c {
            Content::Memory(b) => b,
            Content::File { file, size } => {
                use std::os::unix::fs::FileExt;
                let mut buf = vec![0u8; size as usize];
                file.read_exact_at(&mut buf, 0).unwrap();
                Bytes::from(buf)
            }
        }
    }

    fn violation(r: Result<Content, OpenError>) -> String {
        match r {
            Err(OpenError::AccessViolation(m)) => m,
            other => panic!("expected an access violation, got {other:?}"),
        }
    }

    #[test]
    fn serves_files_and_refuses_escapes() {
        let d = dirs("esc");
        let r = TftpRoot::open(&d.root, DEFAULT_CACHE_BYTES).unwrap();
        assert_eq!(all(r.open("a.bin").unwrap()), Bytes::from_static(b"alpha"));
        assert_eq!(all(r.open("/efi/grubx64.efi").unwrap()), &b"grub"[..]);
        assert_eq!(all(r.open("efi//grubx64.efi").unwrap()), &b"grub"[..]);
        assert_eq!(all(r.open("./efi/./grubx64.efi").unwrap()), &b"grub"[..]);
        // Symlinks that stay inside the root work.
        assert_eq!(all(r.open("efi/back").unwrap()), &b"alpha"[..]);
        assert_eq!(all(r.open("efilink/grubx64.efi").unwrap()), &b"grub"[..]);
        // Symlinks that leave it are refused, relative or absolute.
        assert_eq!(violation(r.open("up")), "path leaves the TFTP root");
        assert_eq!(violation(r.open("abs")), "path leaves the TFTP root");
        assert_eq!(
            violation(r.open("parent/secret")),
            "path leaves the TFTP root"
        );
        // The path policy comes first.
        assert!(violation(r.open("../secret")).contains(".."));
        assert!(violation(r.open("efi/../../secret")).contains(".."));
        assert!(violation(r.open("//etc/passwd")).contains("absolute"));
        assert!(violation(r.open("efi\\..\\..\\secret")).contains("backslash"));
        assert!(violation(r.open("a.bin\0x")).contains("NUL"));
        assert_eq!(r.open("missing").err(), Some(OpenError::NotFound));
        assert_eq!(r.open("a.bin/x").err(), Some(OpenError::NotFound));
        assert_eq!(violation(r.open("efi")), "not a regular file");
    }

    #[test]
    fn fallback_check_refuses_the_same_escapes() {
        let d = dirs("fallback");
        let r = TftpRoot::open(&d.root, DEFAULT_CACHE_BYTES).unwrap();
        let read = |n: &str| {
            r.open_checked(normalize_path(n).unwrap()).map(|mut f| {
                let mut s = String::new();
                f.read_to_string(&mut s).unwrap();
                s
            })
        };
        assert_eq!(read("a.bin").unwrap(), "alpha");
        assert_eq!(read("efi/back").unwrap(), "alpha");
        for bad in ["up", "abs", "parent/secret"] {
            assert_eq!(
                read(bad).unwrap_err(),
                OpenError::AccessViolation("path leaves the TFTP root".into()),
                "{bad}"
            );
        }
        assert_eq!(read("missing").unwrap_err(), OpenError::NotFound);
    }

    #[test]
    fn fifo_and_unreadable_files_do_not_block_or_leak() {
        let d = dirs("fifo");
        let r = TftpRoot::open(&d.root, DEFAULT_CACHE_BYTES).unwrap();
        let st = std::process::Command::new("mkfifo")
            .arg(d.root.join("pipe"))
            .status()
            .unwrap();
        assert!(st.success());
        assert_eq!(violation(r.open("pipe")), "not a regular file");
    }

    #[test]
    fn cache_reads_once_and_notices_changes() {
        let d = dirs("cache");
        let r = TftpRoot::open(&d.root, DEFAULT_CACHE_BYTES).unwrap();
        for _ in 0..5 {
            assert_eq!(all(r.open("a.bin").unwrap()), &b"alpha"[..]);
        }
        assert_eq!(r.disk_loads(), 1);
        assert_eq!(r.cached_bytes(), 5);
        // Same name through a symlink is a different cache key but the same bytes.
        assert_eq!(all(r.open("efi/back").unwrap()), &b"alpha"[..]);
        assert_eq!(r.disk_loads(), 2);
        // Replaced by rename (new inode): reloaded.
        std::fs::write(d.root.join("a.new"), b"beta!!").unwrap();
        std::fs::rename(d.root.join("a.new"), d.root.join("a.bin")).unwrap();
        assert_eq!(all(r.open("a.bin").unwrap()), &b"beta!!"[..]);
        assert_eq!(r.disk_loads(), 3);
        // Rewritten in place with a new size: reloaded.
        std::fs::write(d.root.join("a.bin"), b"gamma").unwrap();
        assert_eq!(all(r.open("a.bin").unwrap()), &b"gamma"[..]);
        assert_eq!(r.disk_loads(), 4);
        assert_eq!(all(r.open("a.bin").unwrap()), &b"gamma"[..]);
        assert_eq!(r.disk_loads(), 4);
        // Deleted: not served from the cache.
        std::fs::remove_file(d.root.join("a.bin")).unwrap();
        assert_eq!(r.open("a.bin").err(), Some(OpenError::NotFound));
    }

    #[test]
    fn concurrent_misses_read_the_file_once() {
        let d = dirs("conc");
        std::fs::write(d.root.join("big"), vec![7u8; 4 << 20]).unwrap();
        let r = std::sync::Arc::new(TftpRoot::open(&d.root, DEFAULT_CACHE_BYTES).unwrap());
        let hs: Vec<_> = (0..16)
            .map(|_| {
                let r = r.clone();
                std::thread::spawn(move || all(r.open("big").unwrap()).len())
            })
            .collect();
        for h in hs {
            assert_eq!(h.join().unwrap(), 4 << 20);
        }
        assert_eq!(r.disk_loads(), 1);
    }

    #[test]
    fn cache_stays_under_its_cap() {
        let d = dirs("cap");
        for (n, len) in [("f1", 40), ("f2", 40), ("f3", 40), ("huge", 200)] {
            std::fs::write(d.root.join(n), vec![1u8; len]).unwrap();
        }
        let r = TftpRoot::open(&d.root, 100).unwrap();
        all(r.open("f1").unwrap());
        all(r.open("f2").unwrap());
        assert_eq!(r.cached_bytes(), 80);
        all(r.open("f1").unwrap()); // f2 is now the least recently used
        all(r.open("f3").unwrap());
        assert_eq!(r.cached_bytes(), 80);
        assert_eq!(r.disk_loads(), 3);
        all(r.open("f1").unwrap());
        assert_eq!(r.disk_loads(), 3, "f1 stayed");
        all(r.open("f2").unwrap());
        assert_eq!(r.disk_loads(), 4, "f2 was evicted");
        // Larger than the whole cache: streamed from disk, never read whole.
        assert!(matches!(
            r.open("huge").unwrap(),
            Content::File { size: 200, .. }
        ));
        assert_eq!(all(r.open("huge").unwrap()), vec![1u8; 200]);
        assert_eq!(r.disk_loads(), 4);
        assert!(r.cached_bytes() <= 100);
    }

    #[test]
    fn large_files_are_streamed_whatever_their_size() {
        let d = dirs("sparse");
        // A 1 TiB file with no blocks on disk: reading it whole would abort on the
        // allocation; opening it must cost nothing.
        let f = std::fs::File::create(d.root.join("huge.img")).unwrap();
        f.set_len(1 << 40).unwrap();
        std::fs::write(d.root.join("grub.efi"), vec![3u8; 5 << 20]).unwrap();
        std::fs::write(d.root.join("small.efi"), vec![4u8; 1 << 20]).unwrap();
        let r = TftpRoot::open(&d.root, DEFAULT_CACHE_BYTES).unwrap();
        assert!(matches!(
            r.open("huge.img").unwrap(),
            Content::File { size, .. } if size == 1 << 40
        ));
        // Over the per-file limit: streamed too; under it: cached.
        assert!(matches!(r.open("grub.efi").unwrap(), Content::File { .. }));
        assert!(r.open("small.efi").unwrap().as_memory().is_some());
        assert_eq!((r.disk_loads(), r.cached_bytes()), (1, 1 << 20));
        let r = r.with_max_cached_file(8 << 20);
        assert!(r.open("grub.efi").unwrap().as_memory().is_some());
    }

    #[test]
    fn bad_roots_are_reported() {
        let d = dirs("bad");
        let e = TftpRoot::open(d.top.join("nope"), 1).unwrap_err();
        assert!(e.to_string().starts_with("cannot open "), "{e}");
        let e = TftpRoot::open(d.root.join("a.bin"), 1).unwrap_err();
        assert!(e.to_string().ends_with("is not a directory"), "{e}");
    }
}
