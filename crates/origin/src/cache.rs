//! In-memory cache of segment bodies, bounded in bytes.
//!
//! Segments are immutable once renamed into place, so a body read once can be served from
//! memory until evicted. Entries are keyed by relative path and carry the file [`Version`]
//! (inode, size, mtime) they were read from: a lookup with a different version is a miss and
//! replaces the entry, so a rewritten file is never served stale. Playlists never enter the
//! cache (the handler re-reads them on every request).
//!
//! Eviction is least-recently-used. Live HLS reads the newest segments and never goes back,
//! so LRU evicts exactly the segments that left the playlist window.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use bytes::Bytes;

use crate::files::Version;

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
}
