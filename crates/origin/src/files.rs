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

/// A finer identity than [`Version`], used to validate cached playlists: the device, and the
/// inode change time on top of the version.
///
/// `ctime` is what makes it strict: every write, truncate, rename of the inode or metadata
/// change sets it to the kernel's current time, and unlike `mtime` no unprivileged call can
/// set it back. So a content change always yields a new stamp, except within one coarse clock
/// tick, which [`crate::cache::PlaylistCache`] rules out by only caching settled files.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stamp {
    /// Device number (`makedev(major, minor)`), since inode numbers are per file system.
    pub dev: u64,
    /// Inode, size and mtime.
    pub version: Version,
    /// Inode change time, nanoseconds since the Unix epoch.
    pub ctime_nanos: i128,
}

impl Stamp {
    /// The stamp described by a file's metadata.
    pub fn of(meta: &Metadata) -> Self {
        Self {
            dev: meta.dev(),
            version: Version::of(meta),
            ctime_nanos: i128::from(meta.ctime()) * 1_000_000_000 + i128::from(meta.ctime_nsec()),
        }
    }

    fn of_statx(stx: &libc::statx) -> Self {
        let nanos =
            |t: libc::statx_timestamp| i128::from(t.tv_sec) * 1_000_000_000 + i128::from(t.tv_nsec);
        Self {
            dev: libc::makedev(stx.stx_dev_major, stx.stx_dev_minor),
            version: Version {
                inode: stx.stx_ino,
                len: stx.stx_size,
                mtime_nanos: nanos(stx.stx_mtime),
            },
            ctime_nanos: nanos(stx.stx_ctime),
        }
    }
}

/// A regular file opened inside the root.
#[derive(Debug)]
pub struct OpenFile {
    /// The open descriptor, positioned at 0.
    pub file: File,
    /// The version of exactly this descriptor.
    pub version: Version,
    /// The stamp of exactly this descriptor.
    pub stamp: Stamp,
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
        let stamp = Stamp::of(&meta);
        Ok(OpenFile {
            file,
            version: stamp.version,
            stamp,
        })
    }

    /// The stamp of `relative` (already validated by [`crate::route`]) by one `statx` on the
    /// path, without opening it; `None` when it is not a regular file (a final symlink is not
    /// followed, so it is `None` too). Blocking file-system call.
    ///
    /// No containment here: `statx` has no `RESOLVE_BENEATH`. That is sound only because the
    /// result is used for nothing but comparing against the stamp of bytes that were read
    /// through [`Root::open_file`]: a match serves bytes of an inode already opened beneath
    /// the root; a mismatch (an escape lands on another inode) falls back to `open_file`.
    pub fn stat(&self, relative: &Path) -> io::Result<Option<Stamp>> {
        with_c_path(relative, |path| {
            // SAFETY: all-zero is a valid statx (plain integers), and the kernel overwrites it.
            let mut stx: libc::statx = unsafe { std::mem::zeroed() };
            // SAFETY: `self.dir` is an open directory descriptor borrowed for the call, `path`
            // is NUL-terminated, and `stx` is a writable statx the kernel fills.
            let ret = unsafe {
                libc::statx(
                    self.dir.as_raw_fd(),
                    path.as_ptr(),
                    libc::AT_SYMLINK_NOFOLLOW | libc::AT_NO_AUTOMOUNT | libc::AT_STATX_SYNC_AS_STAT,
                    libc::STATX_TYPE
                        | libc::STATX_INO
                        | libc::STATX_SIZE
                        | libc::STATX_MTIME
                        | libc::STATX_CTIME,
                    &mut stx,
                )
            };
            if ret != 0 {
                return Err(io::Error::last_os_error());
            }
            let is_file = u32::from(stx.stx_mode) & libc::S_IFMT == libc::S_IFREG;
            Ok(is_file.then(|| Stamp::of_statx(&stx)))
        })
    }
}

/// Longest path converted to a C string on the stack; longer ones (rare: HLS paths are short,
/// and [`crate::route`] caps their depth) take a heap allocation.
const STACK_PATH_BYTES: usize = 256;

/// Calls `f` with `path` as a NUL-terminated string, without allocating for short paths.
fn with_c_path<T>(path: &Path, f: impl FnOnce(&std::ffi::CStr) -> io::Result<T>) -> io::Result<T> {
    let bytes = path.as_os_str().as_bytes();
    // An interior NUL cannot name a file; route() already refuses it.
    let not_found = || io::Error::from(io::ErrorKind::NotFound);
    if bytes.len() < STACK_PATH_BYTES {
        let mut buf = [0u8; STACK_PATH_BYTES];
        buf[..bytes.len()].copy_from_slice(bytes);
        let c =
            std::ffi::CStr::from_bytes_with_nul(&buf[..=bytes.len()]).map_err(|_| not_found())?;
        f(c)
    } else {
        let c = CString::new(bytes).map_err(|_| not_found())?;
        f(&c)
    }
}

/// `openat2(dir, relative, RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS)`: EXDEV if the path
/// would leave `dir`.
fn openat2_beneath(dir: &File, relative: &Path) -> io::Result<File> {
    with_c_path(relative, |path| openat2_beneath_c(dir, path))
}

fn openat2_beneath_c(dir: &File, path: &std::ffi::CStr) -> io::Result<File> {
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
