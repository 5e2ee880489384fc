//! Where served files come from, and which request paths are acceptable.

use crate::content::Content;
use crate::packet::ErrorCode;
use bytes::Bytes;
use std::collections::BTreeMap;
use std::path::Path;

/// Why a file cannot be served. Each variant maps to a TFTP error code.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum OpenError {
    /// The name is well-formed but no such file is served (TFTP error 1).
    #[error("file not found")]
    NotFound,
    /// The name is refused (TFTP error 2).
    #[error("access violation: {0}")]
    AccessViolation(String),
    /// The file exists but could not be read (TFTP error 0).
    #[error("cannot read file: {0}")]
    Io(String),
}

impl OpenError {
    /// The TFTP error code sent to the client.
    pub fn error_code(&self) -> ErrorCode {
        match self {
            OpenError::NotFound => ErrorCode::FileNotFound,
            OpenError::AccessViolation(_) => ErrorCode::AccessViolation,
            OpenError::Io(_) => ErrorCode::NotDefined,
        }
    }
}

/// Why a request path is refused by [`normalize_path`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    /// Nothing left after stripping the leading '/'.
    #[error("empty path")]
    Empty,
    /// A `..` component.
    #[error("path contains a '..' component")]
    ParentDir,
    /// A NUL byte.
    #[error("path contains NUL")]
    Nul,
    /// A backslash (a Windows separator that could smuggle `..\`).
    #[error("path contains a backslash")]
    Backslash,
    /// Still absolute after stripping one leading '/'.
    #[error("absolute path")]
    Absolute,
}

impl From<PathError> for OpenError {
    fn from(e: PathError) -> Self {
        OpenError::AccessViolation(e.to_string())
    }
}

/// Turns a requested file name into the name a [`FileSource`] looks up.
///
/// Strips one leading '/' (PXE ROMs often ask for `/undionly.kpxe`) and refuses
/// empty names, `..` components, NUL, backslashes and names that are still absolute.
pub fn normalize_path(raw: &str) -> Result<&str, PathError> {
    let p = raw.strip_prefix('/').unwrap_or(raw);
    if p.contains('\0') {
        return Err(PathError::Nul);
    }
    if p.contains('\\') {
        return Err(PathError::Backslash);
    }
    if p.is_empty() {
        return Err(PathError::Empty);
    }
    if p.starts_with('/') {
        return Err(PathError::Absolute);
    }
    if p.split('/').any(|c| c == "..") {
        return Err(PathError::ParentDir);
    }
    Ok(p)
}

/// Supplies file contents by name.
///
/// [`crate::serve`] first asks [`FileSource::open_nonblocking`] on the async runtime;
/// only if that has no answer does it call [`FileSource::open`], which may block on
/// disk, on tokio's blocking thread pool.
pub trait FileSource: Send + Sync + 'static {
    /// Opens the file named `path`, as the client sent it (implementations should
    /// pass it through [`normalize_path`]). May block.
    ///
    /// Large files should come back as [`Content::File`], which transfers read a
    /// chunk at a time, never as one allocation of the file's size.
    fn open(&self, path: &str) -> Result<Content, OpenError>;

    /// Answers without blocking when the source can (files already in memory), or
    /// returns `None` to have [`FileSource::open`] called off the runtime.
    fn open_nonblocking(&self, path: &str) -> Option<Result<Content, OpenError>> {
        let _ = path;
        None
    }
}

/// Several sources tried in order: the first that has the file serves it.
///
/// A source's "not found" passes the request on to the next; any other refusal
/// (a bad path, a symlink out of a root) is final. The binary puts the built-in iPXE
/// binaries ([`MemoryFiles`]) before the `--tftp-root` directory, so a file in the
/// root never shadows them.
#[derive(Default)]
pub struct Overlay {
    sources: Vec<std::sync::Arc<dyn FileSource>>,
}

impl Overlay {
    /// An overlay with no sources (every request gets "file not found").
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds `source` after those already added.
    pub fn push(&mut self, source: std::sync::Arc<dyn FileSource>) {
        self.sources.push(source);
    }
}

impl FileSource for Overlay {
    fn open(&self, path: &str) -> Result<Content, OpenError> {
        for s in &self.sources {
            match s.open(path) {
                Err(OpenError::NotFound) => continue,
                other => return other,
            }
        }
        Err(OpenError::NotFound)
    }

    fn open_nonblocking(&self, path: &str) -> Option<Result<Content, OpenError>> {
        for s in &self.sources {
            match s.open_nonblocking(path)? {
                Err(OpenError::NotFound) => continue,
                other => return Some(other),
            }
        }
        Some(Err(OpenError::NotFound))
    }
}

/// An in-memory set of files, keyed by normalised name. The caller fills it once at
/// start-up, typically with the iPXE binaries (`undionly.kpxe`, `ipxe.efi`,
/// `snponly.efi`, `ipxe.pxe`).
#[derive(Clone, Debug, Default)]
pub struct MemoryFiles {
    files: BTreeMap<String, Bytes>,
}

impl MemoryFiles {
    /// An empty set.
    pub fn new() -> Self {
        Self::default()
    }

    /// Serves `data` under `name` (normalised like a request, so `/a` and `a` are the
    /// same name). Replaces any earlier file of that name.
    pub fn insert(&mut self, name: &str, data: impl Into<Bytes>) -> Result<(), PathError> {
        let name = normalize_path(name)?;
        self.files.insert(name.to_string(), data.into());
        Ok(())
    }

    /// Reads `path` from disk once and serves it under `name`. An invalid `name`
    /// is reported as [`std::io::ErrorKind::InvalidInput`].
    pub fn load(&mut self, name: &str, path: impl AsRef<Path>) -> std::io::Result<()> {
        let name = normalize_path(name).map_err(|e| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!("TFTP name {name:?}: {e}"),
            )
        })?;
        let data = std::fs::read(path)?;
        self.files.insert(name.to_string(), Bytes::from(data));
        Ok(())
    }

    /// Served names, sorted.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.files.keys().map(String::as_str)
    }

    /// Number of files.
    pub fn len(&self) -> usize {
        self.files.len()
    }

    /// True when no file is served.
    pub fn is_empty(&self) -> bool {
        self.files.is_empty()
    }
}

impl FileSource for MemoryFiles {
    fn open(&self, path: &str) -> Result<Content, OpenError> {
        let name = normalize_path(path)?;
        self.files
            .get(name)
            .cloned()
            .map(Content::Memory)
            .ok_or(OpenError::NotFound)
    }

    fn open_nonblocking(&self, path: &str) -> Option<Result<Content, OpenError>> {
        Some(self.open(path))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The bytes of an in-memory answer.
    fn mem(r: Result<Content, OpenError>) -> Result<Bytes, OpenError> {
        r.map(|c| c.as_memory().expect("an in-memory file").clone())
    }

    #[test]
    fn normalize_accepts_and_refuses() {
        assert_eq!(normalize_path("/undionly.kpxe"), Ok("undionly.kpxe"));
        assert_eq!(normalize_path("ipxe.efi"), Ok("ipxe.efi"));
        assert_eq!(normalize_path("efi/x..y"), Ok("efi/x..y"));
        assert_eq!(normalize_path(""), Err(PathError::Empty));
        assert_eq!(normalize_path("/"), Err(PathError::Empty));
        assert_eq!(normalize_path("//etc/passwd"), Err(PathError::Absolute));
        assert_eq!(normalize_path("../x"), Err(PathError::ParentDir));
        assert_eq!(normalize_path("/a/../../x"), Err(PathError::ParentDir));
        assert_eq!(normalize_path("a/.."), Err(PathError::ParentDir));
        assert_eq!(normalize_path("a\\..\\b"), Err(PathError::Backslash));
        assert_eq!(normalize_path("a\0b"), Err(PathError::Nul));
    }

    #[test]
    fn memory_files_lookup() {
        let mut m = MemoryFiles::new();
        m.insert("/undionly.kpxe", Bytes::from_static(b"bios"))
            .unwrap();
        m.insert("ipxe.efi", Bytes::from_static(b"efi")).unwrap();
        assert!(m.insert("../evil", Bytes::new()).is_err());
        assert_eq!(
            mem(m.open("undionly.kpxe")).unwrap(),
            Bytes::from_static(b"bios")
        );
        assert_eq!(
            mem(m.open("/ipxe.efi")).unwrap(),
            Bytes::from_static(b"efi")
        );
        assert_eq!(mem(m.open("snponly.efi")), Err(OpenError::NotFound));
        assert_eq!(
            mem(m.open("snponly.efi")).unwrap_err().error_code(),
            ErrorCode::FileNotFound
        );
        let e = mem(m.open("/../ipxe.efi")).unwrap_err();
        assert_eq!(e.error_code(), ErrorCode::AccessViolation);
        assert_eq!(m.names().collect::<Vec<_>>(), ["ipxe.efi", "undionly.kpxe"]);
    }

    /// A source that must be opened off the runtime.
    struct Slow(MemoryFiles);

    impl FileSource for Slow {
        fn open(&self, path: &str) -> Result<Content, OpenError> {
            self.0.open(path)
        }
    }

    #[test]
    fn overlay_tries_sources_in_order() {
        let mut first = MemoryFiles::new();
        first
            .insert("ipxe.efi", Bytes::from_static(b"builtin"))
            .unwrap();
        let mut second = MemoryFiles::new();
        second
            .insert("ipxe.efi", Bytes::from_static(b"shadowed"))
            .unwrap();
        second
            .insert("grubx64.efi", Bytes::from_static(b"grub"))
            .unwrap();
        let mut o = Overlay::new();
        o.push(std::sync::Arc::new(first));
        o.push(std::sync::Arc::new(Slow(second)));
        assert_eq!(mem(o.open("ipxe.efi")).unwrap(), &b"builtin"[..]);
        assert_eq!(
            o.open_nonblocking("ipxe.efi").map(mem),
            Some(Ok(Bytes::from_static(b"builtin")))
        );
        // Not in memory: the blocking source must be asked off the runtime.
        assert_eq!(o.open_nonblocking("grubx64.efi").map(mem), None);
        assert_eq!(mem(o.open("grubx64.efi")).unwrap(), &b"grub"[..]);
        assert_eq!(mem(o.open("nope")), Err(OpenError::NotFound));
        // A refusal is final.
        assert_eq!(
            o.open_nonblocking("../ipxe.efi")
                .map(mem)
                .unwrap()
                .unwrap_err()
                .error_code(),
            ErrorCode::AccessViolation
        );
        assert_eq!(
            Overlay::new().open_nonblocking("x").map(mem),
            Some(Err(OpenError::NotFound))
        );
    }

    #[test]
    fn load_reads_from_disk() {
        let dir = std::env::temp_dir().join(format!("ironpxe-tftp-load-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("f.bin");
        std::fs::write(&p, b"\x01\x02\x03").unwrap();
        let mut m = MemoryFiles::new();
        m.load("f.bin", &p).unwrap();
        assert_eq!(
            mem(m.open("/f.bin")).unwrap(),
            Bytes::from_static(b"\x01\x02\x03")
        );
        let e = m.load("..", &p).unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::InvalidInput);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
