//! In-memory caches: segment bodies (bounded in bytes, LRU) and validated playlists.
//!
//! ## Segments
//!
//! Segments are immutable once renamed into place, so a body read once can be served from
//! memory until evicted. Entries are keyed by relative path and carry the file [`Version`]
//! (inode, size, mtime) they were read from: a lookup with a different version is a miss and
//! replaces the entry, so a rewritten file is never served stale.
//!
//! Eviction is least-recently-used. Live HLS reads the newest segments and never goes back,
//! so LRU evicts exactly the segments that left the playlist window.
//!
//! Memory follows the live window, not the byte cap: [`SegmentCache::sweep`] drops every entry
//! whose file is gone or replaced (the packager deleted it after it left the window), since
//! no request can ever hit it again. The server sweeps on every insert (a new segment is
//! being read: the window just moved) and before each `/metrics` render; so the cache holds
//! at most the segments still on disk, whatever the cap. Without it a 256 MiB cap filled at
//! the stream's bitrate (~16 MB/min in a 50-viewer soak) before LRU did anything.
//!
//! Only connections whose bodies hyper sends (TLS, h2) use this cache: plain HTTP/1.1 sends
//! segments from the page cache with `sendfile` ([`crate::h1`]) and holds no body in memory.
//!
//! ## Playlists
//!
//! [`PlaylistCache`] keeps each playlist's bytes with its [`Stamp`] and its prepared
//! validator headers. The handler checks an entry with one `statx` on the path per request
//! ([`crate::files::Root::stat`]) instead of open + fstat + read + close, and serves it only
//! if the stamp is identical; anything else re-reads the file through the contained open.
//!
//! Why this never serves a stale or partial playlist:
//! - The packager replaces a playlist by renaming a complete new file over it. A request that
//!   starts after the rename resolves the name to the new inode, whose stamp (inode number,
//!   ctime) differs from any entry made from the old one, so it is a miss and a fresh read.
//! - An entry's stamp comes from `fstat` of the very descriptor its bytes were read from,
//!   so bytes and stamp describe one inode; a partial file is never renamed into place.
//! - Inode numbers are reused once a replaced file is freed, and ctime has the kernel's coarse
//!   clock granularity (a few ms), so a new file could in principle repeat an old file's
//!   (inode, size, mtime, ctime) if written within the same tick. Entries are therefore only
//!   made from files whose ctime is at least [`PLAYLIST_SETTLE`] older than the wall clock
//!   read *before* the open: a file that reuses the inode is created after that open (we held
//!   the old inode open until then), so its ctime is at most a tick behind that clock and
//!   cannot equal the cached, settled ctime. The same rule keeps a file still being written
//!   in place (not our packager's way) out of the cache: every write moves its ctime.
//!   Only a backwards step of the system clock larger than the settle time, together with an
//!   inode reuse at equal size, could defeat it.
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::HeaderValue;

use crate::files::{Stamp, Version};

/// A playlist enters the cache only once its ctime is this much older than the clock read
/// before it was opened (see the module docs): comfortably above the kernel's coarse clock
/// tick (1-10 ms), far below a live playlist's lifetime (a target duration, seconds).
pub const PLAYLIST_SETTLE: Duration = Duration::from_millis(50);
/// Most playlists kept; a live origin has a few per stream (master plus renditions).
pub const PLAYLIST_MAX_ENTRIES: usize = 1024;
/// Largest playlist kept; a live window is a few KiB, and bigger ones are read every time.
pub const PLAYLIST_MAX_BYTES: u64 = 256 * 1024;

/// Byte-bounded LRU map from path to body.
#[derive(Debug)]
pub struct SegmentCache {
    max_bytes: u64,
    max_entry_bytes: u64,
    // A std Mutex, not a tokio one: the critical sections are a hash lookup and a few field
    // updates, never held across an await, and a std lock is cheaper.
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    entries: HashMap<PathBuf, Entry>,
    bytes: u64,
    // Logical clock for LRU: bumped on every hit or insert. Eviction scans for the minimum,
    // which is O(n) but n is small (a few hundred segments) and eviction is rare relative to
    // hits; it keeps the structure a single HashMap with no unsafe linked list.
    tick: u64,
}

#[derive(Debug)]
struct Entry {
    version: Version,
    body: Bytes,
    last_used: u64,
}

impl SegmentCache {
    /// A cache holding at most `max_bytes` of bodies, none larger than `max_entry_bytes`.
    pub fn new(max_bytes: u64, max_entry_bytes: u64) -> Self {
        Self {
            max_bytes,
            max_entry_bytes: max_entry_bytes.min(max_bytes),
            inner: Mutex::default(),
        }
    }

    /// Whether a body of `len` bytes may be cached at all.
    pub fn admits(&self, len: u64) -> bool {
        len <= self.max_entry_bytes
    }

    /// The body of `path` at exactly `version`, if cached.
    pub fn get(&self, path: &Path, version: &Version) -> Option<Bytes> {
        let mut inner = self.lock();
        inner.tick += 1;
        let tick = inner.tick;
        let entry = inner.entries.get_mut(path)?;
        if entry.version != *version {
            return None;
        }
        entry.last_used = tick;
        Some(entry.body.clone())
    }

    /// Stores `body` for `path` at `version`, replacing any other version and evicting least
    /// recently used entries until the total fits.
    pub fn insert(&self, path: PathBuf, version: Version, body: Bytes) {
        let len = body.len() as u64;
        if !self.admits(len) {
            return;
        }
        let mut inner = self.lock();
        if let Some(old) = inner.entries.remove(&path) {
            inner.bytes -= old.body.len() as u64;
        }
        while inner.bytes + len > self.max_bytes {
            let Some(victim) = inner
                .entries
                .iter()
                .min_by_key(|(_, e)| e.last_used)
                .map(|(p, _)| p.clone())
            else {
                break;
            };
            if let Some(old) = inner.entries.remove(&victim) {
                inner.bytes -= old.body.len() as u64;
            }
        }
        inner.tick += 1;
        let last_used = inner.tick;
        inner.bytes += len;
        inner.entries.insert(
            path,
            Entry {
                version,
                body,
                last_used,
            },
        );
    }

    /// Drops every entry for which `current(path)` is not its version any more: the file was
    /// deleted or replaced, so the entry can never be hit again. `current` is a stat of the
    /// path (`None`: gone). Returns the bytes released.
    pub fn sweep(&self, current: impl Fn(&Path) -> Option<Version>) -> u64 {
        // Stat outside the lock (a stat per entry, a few per stream), then remove under it
        // only entries still at the version found stale.
        let entries: Vec<(PathBuf, Version)> = {
            let inner = self.lock();
            inner
                .entries
                .iter()
                .map(|(path, entry)| (path.clone(), entry.version))
                .collect()
        };
        let stale: Vec<(PathBuf, Version)> = entries
            .into_iter()
            .filter(|(path, version)| current(path) != Some(*version))
            .collect();
        if stale.is_empty() {
            return 0;
        }
        let mut inner = self.lock();
        let mut released = 0;
        for (path, version) in stale {
            if inner
                .entries
                .get(&path)
                .is_some_and(|e| e.version == version)
                && let Some(old) = inner.entries.remove(&path)
            {
                released += old.body.len() as u64;
            }
        }
        inner.bytes -= released;
        released
    }

    /// Entries currently held.
    pub fn len(&self) -> usize {
        self.lock().entries.len()
    }

    /// Whether no entry is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes currently held.
    pub fn bytes(&self) -> u64 {
        self.lock().bytes
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic while holding the lock leaves consistent data (every update is completed
        // before any call that could panic), so a poisoned lock is still usable.
        self.inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// One version of a playlist with the response headers derived from it, prepared once per
/// version rather than once per request.
#[derive(Debug)]
pub struct Prepared {
    /// Identity of the inode the body was read from.
    pub stamp: Stamp,
    /// The whole file.
    pub body: Bytes,
    /// Strong ETag of the version ([`Version::etag`]).
    pub etag: HeaderValue,
    /// `Last-Modified` of the version.
    pub last_modified: HeaderValue,
    /// `Content-Length` of the whole body.
    pub content_length: HeaderValue,
}

impl Prepared {
    /// Prepares the headers of `body`, read from the file described by `stamp`.
    pub fn new(stamp: Stamp, body: Bytes) -> Self {
        let version = stamp.version;
        Self {
            stamp,
            content_length: HeaderValue::from(body.len() as u64),
            body,
            etag: ascii_header(version.etag()),
            last_modified: ascii_header(httpdate::fmt_http_date(version.modified())),
        }
    }

    /// The version's ETag as text (for precondition checks).
    pub fn etag_str(&self) -> &str {
        self.etag.to_str().unwrap_or_default()
    }
}

fn ascii_header(value: String) -> HeaderValue {
    // Hex digits, quotes, dashes and an HTTP date: always a valid header value.
    HeaderValue::try_from(value).unwrap_or_else(|_| HeaderValue::from_static(""))
}

/// Playlists by relative path, each valid only for the exact [`Stamp`] it was read at.
#[derive(Debug, Default)]
pub struct PlaylistCache {
    // A std RwLock: every request takes a read lock for one hash lookup; writes happen once
    // per playlist version (every few seconds per stream).
    entries: RwLock<HashMap<PathBuf, Arc<Prepared>>>,
}

impl PlaylistCache {
    /// An empty cache.
    pub fn new() -> Self {
        Self::default()
    }

    /// The entry for `path` if it was read at exactly `stamp`.
    pub fn get(&self, path: &Path, stamp: &Stamp) -> Option<Arc<Prepared>> {
        let entries = self.entries.read().unwrap_or_else(|p| p.into_inner());
        entries
            .get(path)
            .filter(|entry| entry.stamp == *stamp)
            .cloned()
    }

    /// Whether `prepared`, read from a file opened after the wall clock read `opened_after`,
    /// may be cached: small enough, and settled (see the module docs).
    pub fn admits(prepared: &Prepared, opened_after: SystemTime) -> bool {
        let settled = opened_after
            .checked_sub(PLAYLIST_SETTLE)
            .and_then(|t| t.duration_since(SystemTime::UNIX_EPOCH).ok())
            .map_or(i128::MIN, |d| d.as_nanos() as i128);
        prepared.body.len() as u64 <= PLAYLIST_MAX_BYTES && prepared.stamp.ctime_nanos <= settled
    }

    /// Stores `prepared` for `path`, replacing the previous version. Beyond
    /// [`PLAYLIST_MAX_ENTRIES`] the cache starts over: a miss only costs one read.
    pub fn insert(&self, path: PathBuf, prepared: Arc<Prepared>) {
        let mut entries = self.entries.write().unwrap_or_else(|p| p.into_inner());
        if entries.len() >= PLAYLIST_MAX_ENTRIES && !entries.contains_key(&path) {
            entries.clear();
        }
        entries.insert(path, prepared);
    }

    /// Forgets `path` (the file is gone).
    pub fn remove(&self, path: &Path) {
        let mut entries = self.entries.write().unwrap_or_else(|p| p.into_inner());
        entries.remove(path);
    }

    /// Playlists currently held.
    pub fn len(&self) -> usize {
        self.entries.read().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// Whether no playlist is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn version(inode: u64, len: u64) -> Version {
        Version {
            inode,
            len,
            mtime_nanos: 1,
        }
    }

    #[test]
    fn other_version_misses() {
        let cache = SegmentCache::new(100, 100);
        let p = PathBuf::from("/r/a.ts");
        cache.insert(p.clone(), version(1, 3), Bytes::from_static(b"old"));
        assert_eq!(cache.get(&p, &version(1, 3)).as_deref(), Some(&b"old"[..]));
        assert_eq!(
            cache.get(&p, &version(2, 3)),
            None,
            "a renamed-over file must miss"
        );
    }

    #[test]
    fn bounded_in_bytes_lru() {
        let cache = SegmentCache::new(10, 10);
        let (a, b, c) = (PathBuf::from("a"), PathBuf::from("b"), PathBuf::from("c"));
        cache.insert(a.clone(), version(1, 4), Bytes::from_static(b"aaaa"));
        cache.insert(b.clone(), version(2, 4), Bytes::from_static(b"bbbb"));
        assert!(cache.get(&a, &version(1, 4)).is_some()); // a is now more recent than b
        cache.insert(c.clone(), version(3, 4), Bytes::from_static(b"cccc"));
        assert!(cache.bytes() <= 10);
        assert!(
            cache.get(&b, &version(2, 4)).is_none(),
            "least recently used evicted"
        );
        assert!(cache.get(&a, &version(1, 4)).is_some());
        assert!(cache.get(&c, &version(3, 4)).is_some());
        cache.insert(
            PathBuf::from("big"),
            version(4, 11),
            Bytes::from(vec![0; 11]),
        );
        assert!(
            cache.get(Path::new("big"), &version(4, 11)).is_none(),
            "oversized not admitted"
        );
    }

    #[test]
    fn sweep_drops_deleted_and_replaced_files_only() {
        let cache = SegmentCache::new(100, 100);
        let (kept, deleted, replaced) =
            (PathBuf::from("k"), PathBuf::from("d"), PathBuf::from("r"));
        cache.insert(kept.clone(), version(1, 4), Bytes::from_static(b"kkkk"));
        cache.insert(deleted.clone(), version(2, 4), Bytes::from_static(b"dddd"));
        cache.insert(replaced.clone(), version(3, 4), Bytes::from_static(b"rrrr"));
        let released = cache.sweep(|path| match path.to_str() {
            Some("k") => Some(version(1, 4)),
            Some("r") => Some(version(9, 4)),
            _ => None,
        });
        assert_eq!(released, 8);
        assert_eq!(cache.bytes(), 4);
        assert_eq!(cache.len(), 1);
        assert!(cache.get(&kept, &version(1, 4)).is_some());
    }

    fn stamp(inode: u64, ctime_nanos: i128) -> Stamp {
        Stamp {
            dev: 1,
            version: version(inode, 3),
            ctime_nanos,
        }
    }

    #[test]
    fn playlist_entry_needs_the_exact_stamp() {
        let cache = PlaylistCache::new();
        let p = PathBuf::from("s/index.m3u8");
        let old = Arc::new(Prepared::new(stamp(1, 10), Bytes::from_static(b"old")));
        cache.insert(p.clone(), old);
        assert!(cache.get(&p, &stamp(1, 10)).is_some());
        assert!(cache.get(&p, &stamp(2, 10)).is_none(), "renamed-in file");
        assert!(cache.get(&p, &stamp(1, 11)).is_none(), "changed in place");
        cache.remove(&p);
        assert!(cache.get(&p, &stamp(1, 10)).is_none());
    }

    #[test]
    fn only_settled_playlists_are_admitted() {
        let epoch = SystemTime::UNIX_EPOCH;
        let at = |ms: u64| epoch + Duration::from_millis(ms);
        let ctime = 1_000 * 1_000_000; // 1 s, in ns
        let p = Prepared::new(stamp(1, ctime), Bytes::from_static(b"abc"));
        assert!(!PlaylistCache::admits(&p, at(1_000)), "just written");
        assert!(
            !PlaylistCache::admits(&p, at(1_049)),
            "within the settle time"
        );
        assert!(PlaylistCache::admits(&p, at(1_050)));
        assert_eq!(p.etag_str(), version(1, 3).etag());
        assert_eq!(p.content_length, "3");
    }
}
