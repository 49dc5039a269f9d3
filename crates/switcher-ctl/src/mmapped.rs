//! An array map created with `BPF_F_MMAPABLE`, mapped into this process: for the maps the data
//! plane writes one word at a time without a lock (the handshake table, the flow cache's
//! versions), which user space must read and write word by word with atomics too, never by
//! copying whole values in and out with map syscalls. aya 0.14 maps no map into memory, hence
//! the `mmap` call here.

use std::os::fd::{AsFd as _, AsRawFd as _};
use std::ptr::NonNull;

use anyhow::{Result, bail};
use aya::maps::MapData;

/// `BPF_F_MMAPABLE` (`include/uapi/linux/bpf.h`).
const BPF_F_MMAPABLE: u32 = 1 << 10;

/// The whole of an mmapable array of `len` values of `T`, mapped shared.
///
/// The kernel lays an array's values out 8-byte aligned: value `i` is at `i` times the value
/// size rounded up to 8 ([`stride`]), not at `i * size_of::<T>()` for a 4-byte `T`.
pub struct Mapped<T> {
    /// The first value of the mapping.
    base: NonNull<T>,
    /// Values in the array.
    len: usize,
    /// The map, kept open for as long as it is mapped.
    _map: MapData,
}

// SAFETY: the mapping is shared memory that the data plane writes concurrently anyway; the
// users of this type access it only with volatile copies and atomics, so using it from
// another thread adds nothing the kernel's writers do not already do.
unsafe impl<T> Send for Mapped<T> {}
// SAFETY: as for `Send`.
unsafe impl<T> Sync for Mapped<T> {}

impl<T> Mapped<T> {
    /// Maps `map`, named `name` in errors, which must be an mmapable array of exactly `len`
    /// values of `T`; anything else (e.g. pins left by an older build) is refused with what
    /// to do.
    pub fn new(map: MapData, name: &str, len: usize) -> Result<Self> {
        let info = map.info()?;
        if info.value_size() as usize != size_of::<T>()
            || info.max_entries() as usize != len
            || info.map_flags() & BPF_F_MMAPABLE == 0
        {
            bail!(
                "the pinned {name} is not this build's ({} entries of {} bytes, flags {:#x}; \
                 expected {len} mmapable entries of {} bytes): run `switcher-ctl detach` and \
                 attach again",
                info.max_entries(),
                info.value_size(),
                info.map_flags(),
                size_of::<T>()
            );
        }
        // SAFETY: a new shared mapping of the map's fd; the kernel checks that the length fits
        // the array (it is the array's size; the kernel rounds the array to whole pages).
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len * stride::<T>(),
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                map.fd().as_fd().as_raw_fd(),
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error())
                .map_err(|e| anyhow::anyhow!("mapping {name}: {e}"));
        }
        Ok(Mapped {
            base: NonNull::new(p.cast()).expect("mmap returned a non-null address"),
            len,
            _map: map,
        })
    }

    /// A pointer to value `i` (< the array's length), valid as long as `self`. Map memory is
    /// page aligned and values 8-byte aligned.
    pub fn at(&self, i: usize) -> *mut T {
        assert!(
            i < self.len,
            "index {i} out of a mapped array of {}",
            self.len
        );
        // SAFETY: value `i` lies inside the mapping, at `i` strides.
        unsafe {
            self.base
                .as_ptr()
                .cast::<u8>()
                .add(i * stride::<T>())
                .cast()
        }
    }

    /// Values in the array.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the array has no value (never, for the maps mapped here).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

impl<T> Drop for Mapped<T> {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `new`, of this length, no longer used.
        unsafe { libc::munmap(self.base.as_ptr().cast(), self.len * stride::<T>()) };
    }
}

/// A second handle on the array map `name` of the loaded object `ebpf`, to give to
/// [`Mapped::new`] (through the types that map it: `HandshakeTable`, `flow_cache::Versions`,
/// `flow_cache::Copies`) while `ebpf` keeps its own: what tests and benches that load the
/// object themselves, not through pins, map it with.
pub fn array_of(ebpf: &aya::Ebpf, name: &str) -> Result<MapData> {
    let Some(aya::maps::Map::Array(data)) = ebpf.map(name) else {
        bail!("the object has no array map {name}");
    };
    Ok(MapData::from_fd(data.fd().as_fd().try_clone_to_owned()?)?)
}

/// Bytes from one value of an array map to the next: the value size rounded up to 8 (the
/// kernel's `round_up(attr->value_size, 8)` in `array_map_alloc`).
const fn stride<T>() -> usize {
    size_of::<T>().next_multiple_of(8)
}
