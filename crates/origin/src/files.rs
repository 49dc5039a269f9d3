//! File access below the root: containment check, open, and the validators (ETag,
//! Last-Modified, cache key) taken from the *opened* file.
//!
//! Second traversal defence (the first is [`crate::route`]), enforced by the kernel where it
//! can be: `openat2(root_fd, relative, RESOLVE_BENEATH)` refuses, atomically, any resolution
//! that leaves the root directory, through `..` or a symlink. Relative symlinks that stay
//! inside are followed; absolute symlinks are refused (the kernel cannot tell whether they
//! stay beneath), so links inside the root should be relative. Where `openat2` is missing (Linux < 5.6, some seccomp sandboxes) the fallback
//! canonicalizes the path and checks it against the canonical root, which is equivalent
//! except for a rename race between the check and the open.
//!
//! Validators come from `fstat` on the open descriptor, never from a second `stat` on the
//! path: the packager renames new files over old ones, and the bytes we send must be the
//! bytes the validators describe.

use std::ffi::CString;
use std::fs::{File, Metadata};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
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
}

/// The served directory: its canonical path and an open descriptor to resolve beneath.
#[derive(Debug)]
pub struct Root {
    path: PathBuf,
    dir: File,
    // Cleared the first time the kernel says openat2 is unavailable, so we do not ask again.
    openat2: AtomicBool,
}

/// Flags for every file we open: read-only, not inherited by children, and non-blocking so
/// that opening a FIFO planted in the root returns at once instead of waiting for a writer
/// (reads of regular files ignore O_NONBLOCK).
const OPEN_FLAGS: libc::c_int =
    libc::O_RDONLY | libc::O_CLOEXEC | libc::O_NONBLOCK | libc::O_NOCTTY;

impl Root {
    /// Opens the root directory; `path` must already be canonical (see
    /// [`crate::Config::validate`]).
    pub fn open(path: PathBuf) -> io::Result<Self> {
        let dir = File::open(&path)?;
        Ok(Self {
            path,
            dir,
            openat2: AtomicBool::new(true),
        })
    }

    /// The canonical root path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Opens `relative` (already validated by [`crate::route`]) below the root.
    /// Blocking file-system calls.
    pub fn open_file(&self, relative: &Path) -> Result<OpenFile, FileError> {
        if relative.is_absolute() {
            return Err(FileError::NotFound);
        }
        let opened = if self.openat2.load(Ordering::Relaxed) {
            match openat2_beneath(&self.dir, relative) {
                Err(e) if openat2_unavailable(&e) => {
                    tracing::warn!(error = %e, "openat2 unavailable, using canonicalize checks");
                    self.openat2.store(false, Ordering::Relaxed);
                    open_canonical_below(&self.path, relative)
                }
                other => other,
            }
        } else {
            open_canonical_below(&self.path, relative)
        };
        let file = match opened {
            Ok(file) => file,
            Err(e) if e.raw_os_error() == Some(libc::EXDEV) => {
                tracing::warn!(path = %relative.display(), "refused: resolves outside the root");
                return Err(FileError::NotFound);
            }
            Err(e) if is_not_found(&e) => return Err(FileError::NotFound),
            Err(e) => return Err(e.into()),
        };
        let meta = file.metadata()?;
        // Directories, FIFOs and devices are never content.
        if !meta.file_type().is_file() {
            return Err(FileError::NotFound);
        }
        Ok(OpenFile {
            file,
            version: Version::of(&meta),
        })
    }
}

/// `openat2(dir, relative, RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS)`: EXDEV if the path
/// would leave `dir`.
fn openat2_beneath(dir: &File, relative: &Path) -> io::Result<File> {
    // An interior NUL cannot name a file; route() already refuses it.
    let path = CString::new(relative.as_os_str().as_bytes())
        .map_err(|_| io::Error::from(io::ErrorKind::NotFound))?;
    // libc marks open_how non-exhaustive (the kernel may grow it), so start from zeroes,
    // which is also what the kernel expects for any field we do not set.
    // SAFETY: open_how is plain integers; all-zero is a valid value.
    let mut how: libc::open_how = unsafe { std::mem::zeroed() };
    how.flags = OPEN_FLAGS as u64;
    how.resolve = libc::RESOLVE_BENEATH | libc::RESOLVE_NO_MAGICLINKS;
    // SAFETY: `dir` is an open directory descriptor borrowed for the call, `path` is a valid
    // NUL-terminated string, and `how` is a fully initialized open_how whose exact size we
    // pass, as openat2(2) requires. The kernel reads these and returns a new descriptor or -1.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_openat2,
            dir.as_raw_fd(),
            path.as_ptr(),
            &how as *const libc::open_how,
            std::mem::size_of::<libc::open_how>(),
        )
    };
    if ret < 0 {
        return Err(io::Error::last_os_error());
    }
    let fd = libc::c_int::try_from(ret).map_err(io::Error::other)?;
    // SAFETY: openat2 succeeded, so `fd` is a new descriptor that nothing else owns.
    Ok(unsafe { File::from_raw_fd(fd) })
}

/// The kernel or a sandbox does not offer openat2 (or not these resolve flags).
fn openat2_unavailable(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::ENOSYS | libc::EPERM | libc::EINVAL)
    )
}

/// Fallback containment: canonicalize (resolving every symlink) and require the result to lie
/// inside the canonical root; EXDEV, like openat2, when it does not.
fn open_canonical_below(root: &Path, relative: &Path) -> io::Result<File> {
    let canonical = std::fs::canonicalize(root.join(relative))?;
    if !canonical.starts_with(root) {
        return Err(io::Error::from_raw_os_error(libc::EXDEV));
    }
    std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(OPEN_FLAGS)
        .open(&canonical)
}

fn is_not_found(e: &io::Error) -> bool {
    // ENOTDIR: a path component is a file (`/hls/index.m3u8/x.ts`); ELOOP: a symlink loop or
    // a magic link (/proc/self/fd/N) refused by RESOLVE_NO_MAGICLINKS. Both are "not there".
    matches!(
        e.kind(),
        io::ErrorKind::NotFound | io::ErrorKind::NotADirectory
    ) || e.raw_os_error() == Some(libc::ELOOP)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Both containment paths refuse the same escapes and allow the same inside symlink.
    #[test]
    fn both_strategies_contain() {
        let dir = tempfile::tempdir().expect("temp dir");
        let root = dir.path().join("root");
        std::fs::create_dir_all(root.join("s")).expect("mkdir");
        std::fs::write(root.join("s/a.ts"), b"in").expect("write");
        std::fs::write(dir.path().join("secret.ts"), b"out").expect("write secret");
        std::os::unix::fs::symlink(dir.path().join("secret.ts"), root.join("s/out.ts"))
            .expect("link");
        std::os::unix::fs::symlink("a.ts", root.join("s/in.ts")).expect("link");
        let root = std::fs::canonicalize(root).expect("canonical");
        let r = Root::open(root.clone()).expect("open root");
        for fallback in [false, true] {
            r.openat2.store(!fallback, Ordering::Relaxed);
            assert!(
                matches!(r.open_file(Path::new("s/out.ts")), Err(FileError::NotFound)),
                "fallback={fallback}"
            );
            assert!(
                matches!(
                    r.open_file(Path::new("s/../../secret.ts")),
                    Err(FileError::NotFound)
                ),
                "fallback={fallback}"
            );
            assert!(
                matches!(r.open_file(Path::new("s")), Err(FileError::NotFound)),
                "directory, fallback={fallback}"
            );
            assert!(
                r.open_file(Path::new("s/in.ts")).is_ok(),
                "inside symlink, fallback={fallback}"
            );
            assert!(
                r.open_file(Path::new("s/a.ts")).is_ok(),
                "fallback={fallback}"
            );
        }
    }
}
