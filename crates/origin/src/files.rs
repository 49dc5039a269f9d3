//! File access below the root: containment check, open, and the validators (ETag,
//! Last-Modified, cache key) taken from the *opened* file.
//!
//! Second traversal defence (the first is [`crate::route`]): the joined path is canonicalized,
//! which resolves every symlink, and must still lie inside the canonical root. A symlink that
//! points out of the root is therefore refused, one that stays inside is followed.
//!
//! Validators come from `fstat` on the open descriptor, never from a second `stat` on the
//! path: the packager renames new files over old ones, and the bytes we send must be the
//! bytes the validators describe.

use std::fs::{File, Metadata};
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Why a file could not be served.
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    /// Missing, outside the root, or not a regular file: all look the same to the client.
    #[error("not found")]
    NotFound,
    /// Anything else the file system reported (permissions, I/O).
    #[error("I/O error: {0}")]
    Io(#[from] io::Error),
}

/// Identity of one version of a file: a rename-over or rewrite changes at least one field.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Version {
    /// Inode number: a renamed-in replacement has a new one.
    pub inode: u64,
    /// Size in bytes.
    pub len: u64,
    /// Modification time, nanoseconds since the Unix epoch.
    pub mtime_nanos: i128,
}

impl Version {
    /// The version described by a file's metadata.
    pub fn of(meta: &Metadata) -> Self {
        let mtime_nanos = i128::from(meta.mtime()) * 1_000_000_000 + i128::from(meta.mtime_nsec());
        Self {
            inode: meta.ino(),
            len: meta.len(),
            mtime_nanos,
        }
    }

    /// Strong entity tag (RFC 9110 section 8.8.3). Strong because a (inode, size, mtime)
    /// triple names one immutable byte sequence here, which also lets ranges use it (If-Range).
    pub fn etag(&self) -> String {
        format!("\"{:x}-{:x}-{:x}\"", self.inode, self.len, self.mtime_nanos)
    }

    /// Modification time, truncated to whole seconds as HTTP dates are.
    pub fn modified(&self) -> SystemTime {
        let secs = u64::try_from(self.mtime_nanos.div_euclid(1_000_000_000)).unwrap_or(0);
        UNIX_EPOCH + Duration::from_secs(secs)
    }
}

/// A regular file opened inside the root.
#[derive(Debug)]
pub struct OpenFile {
    /// The open descriptor, positioned at 0.
    pub file: File,
    /// The version of exactly this descriptor.
    pub version: Version,
    /// Canonical path, used as the cache key (two URLs for one file share an entry).
    pub canonical: PathBuf,
}

/// Opens `relative` (already validated by [`crate::route`]) below `root` (canonical).
/// Blocking: call from `spawn_blocking`.
pub fn open_below(root: &Path, relative: &Path) -> Result<OpenFile, FileError> {
    if relative.is_absolute() {
        return Err(FileError::NotFound);
    }
    let canonical = match std::fs::canonicalize(root.join(relative)) {
        Ok(path) => path,
        Err(e) if is_not_found(&e) => return Err(FileError::NotFound),
        Err(e) => return Err(e.into()),
    };
    if !canonical.starts_with(root) {
        tracing::warn!(path = %relative.display(), "refused: resolves outside the root");
        return Err(FileError::NotFound);
    }
    // Check the type before opening: opening a FIFO for reading would block until a writer
    // appears. The fstat below re-checks the descriptor we actually read.
    match std::fs::metadata(&canonical) {
        Ok(meta) if meta.file_type().is_file() => {}
        Ok(_) => return Err(FileError::NotFound),
        Err(e) if is_not_found(&e) => return Err(FileError::NotFound),
        Err(e) => return Err(e.into()),
    }
    let file = match File::open(&canonical) {
        Ok(file) => file,
        Err(e) if is_not_found(&e) => return Err(FileError::NotFound),
        Err(e) => return Err(e.into()),
    };
    let meta = file.metadata()?;
    // Directories, FIFOs and devices are never content; a FIFO would even block the reader.
    if !meta.file_type().is_file() {
        return Err(FileError::NotFound);
    }
    Ok(OpenFile {
        file,
        version: Version::of(&meta),
        canonical,
    })
}

fn is_not_found(e: &io::Error) -> bool {
    // ENOTDIR: a path component is a file (`/hls/index.m3u8/x.ts`): still just "not there".
    matches!(
        e.kind(),
        io::ErrorKind::NotFound | io::ErrorKind::NotADirectory
    )
}
