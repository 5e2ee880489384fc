//! Where served files come from, and which request paths are acceptable.

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
}

impl OpenError {
    /// The TFTP error code sent to the client.
    pub fn error_code(&self) -> ErrorCode {
        match self {
            OpenError::NotFound => ErrorCode::FileNotFound,
            OpenError::AccessViolation(_) => ErrorCode::AccessViolation,
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
/// `open` is called on the async runtime for every read request, so it must be fast:
/// implementations keep files in memory (see [`MemoryFiles`]) rather than read disk.
pub trait FileSource: Send + Sync + 'static {
    /// Returns the whole file named `path`, as the client sent it (implementations
    /// should pass it through [`normalize_path`]).
    fn open(&self, path: &str) -> Result<Bytes, OpenError>;
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
    fn open(&self, path: &str) -> Result<Bytes, OpenError> {
        let name = normalize_path(path)?;
        self.files.get(name).cloned().ok_or(OpenError::NotFound)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
            m.open("undionly.kpxe").unwrap(),
            Bytes::from_static(b"bios")
        );
        assert_eq!(m.open("/ipxe.efi").unwrap(), Bytes::from_static(b"efi"));
        assert_eq!(m.open("snponly.efi"), Err(OpenError::NotFound));
        assert_eq!(
            m.open("snponly.efi").unwrap_err().error_code(),
            ErrorCode::FileNotFound
        );
        let e = m.open("/../ipxe.efi").unwrap_err();
        assert_eq!(e.error_code(), ErrorCode::AccessViolation);
        assert_eq!(m.names().collect::<Vec<_>>(), ["ipxe.efi", "undionly.kpxe"]);
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
            m.open("/f.bin").unwrap(),
            Bytes::from_static(b"\x01\x02\x03")
        );
        let e = m.load("..", &p).unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::InvalidInput);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
