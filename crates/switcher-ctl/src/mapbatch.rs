//! Batch operations on BPF hash maps (`BPF_MAP_LOOKUP_BATCH`, `BPF_MAP_DELETE_BATCH`, Linux
//! 5.6+), which aya 0.14 does not wrap. Retiring an origin reads the whole flow table (one
//! syscall per entry the plain way, ~0.7 s for 200,000 flows; a few dozen syscalls this way),
//! and a paced drain and the deletion of retired flows delete keys in batches.
//!
//! Reference: `include/uapi/linux/bpf.h` (the `batch` member of `union bpf_attr`) and
//! `kernel/bpf/hashtab.c` (`__htab_map_lookup_and_delete_batch`: the batch token is a `u32`
//! bucket index; `ENOENT` ends the walk; `ENOSPC` means a bucket holds more than `count`).

use std::io;
use std::os::fd::{AsRawFd as _, BorrowedFd};

use aya::Pod;

/// `BPF_MAP_LOOKUP_BATCH` (`enum bpf_cmd`).
const BPF_MAP_LOOKUP_BATCH: libc::c_long = 24;
/// `BPF_MAP_DELETE_BATCH` (`enum bpf_cmd`).
const BPF_MAP_DELETE_BATCH: libc::c_long = 27;
/// Entries asked for per lookup call: large enough that a syscall moves a lot, small enough
/// that the buffers stay a few hundred KiB.
const CHUNK: usize = 8_192;

/// The `batch` member of `union bpf_attr`, as the kernel lays it out.
#[repr(C)]
#[derive(Default)]
struct BatchAttr {
    in_batch: u64,
    out_batch: u64,
    keys: u64,
    values: u64,
    count: u32,
    map_fd: u32,
    elem_flags: u64,
    flags: u64,
}

/// `bpf(cmd, attr)`; the kernel updates `attr.count` even when the call fails.
fn bpf(cmd: libc::c_long, attr: &mut BatchAttr) -> io::Result<()> {
    // SAFETY: `attr` is a valid `bpf_attr` prefix of the size passed; every pointer in it
    // points to a buffer of `count` elements of the map's key/value size that outlives the
    // call (set up by the callers below).
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr as *mut BatchAttr,
            std::mem::size_of::<BatchAttr>(),
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Every (key, value) of the hash map `fd`, read `CHUNK` entries per syscall. Entries inserted
/// or deleted during the walk may or may not be seen (as with any map walk).
pub fn lookup_all<K: Pod, V: Pod>(fd: BorrowedFd<'_>) -> io::Result<Vec<(K, V)>> {
    let mut out = Vec::new();
    // SAFETY: `K` and `V` are `Pod`: any bit pattern, including zero, is a valid value.
    let mut keys: Vec<K> = vec![unsafe { std::mem::zeroed() }; CHUNK];
    let mut values: Vec<V> = vec![unsafe { std::mem::zeroed() }; CHUNK];
    let mut token_in = 0u32;
    let mut token_out = 0u32;
    let mut first = true;
    loop {
        let mut attr = BatchAttr {
            in_batch: if first {
                0
            } else {
                &mut token_in as *mut u32 as u64
            },
            out_batch: &mut token_out as *mut u32 as u64,
            keys: keys.as_mut_ptr() as u64,
            values: values.as_mut_ptr() as u64,
            count: CHUNK as u32,
            map_fd: fd.as_raw_fd() as u32,
            ..BatchAttr::default()
        };
        let result = bpf(BPF_MAP_LOOKUP_BATCH, &mut attr);
        let n = (attr.count as usize).min(CHUNK);
        out.extend(keys[..n].iter().copied().zip(values[..n].iter().copied()));
        match result {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(out),
            Err(e) => return Err(e),
        }
        token_in = token_out;
        first = false;
    }
}

/// What [`delete`] did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Deleted {
    /// Keys deleted.
    pub count: u64,
    /// Indices into the keys given of those that were not in the map, ascending.
    pub missing: Vec<usize>,
}

/// Deletes `keys` from the map `fd`, skipping keys that are already gone (evicted, or deleted
/// by the data plane meanwhile).
pub fn delete<K: Pod>(fd: BorrowedFd<'_>, keys: &[K]) -> io::Result<Deleted> {
    let mut out = Deleted::default();
    let mut at = 0;
    while at < keys.len() {
        let rest = &keys[at..];
        let mut attr = BatchAttr {
            keys: rest.as_ptr() as u64,
            count: rest.len().min(u32::MAX as usize) as u32,
            map_fd: fd.as_raw_fd() as u32,
            ..BatchAttr::default()
        };
        let result = bpf(BPF_MAP_DELETE_BATCH, &mut attr);
        let done = (attr.count as usize).min(rest.len());
        out.count += done as u64;
        at += done;
        match result {
            Ok(()) => {}
            // The kernel stops at the first missing key, having deleted the `done` before it:
            // note it, skip it and go on.
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {
                if at < keys.len() {
                    out.missing.push(at);
                    at += 1;
                }
            }
            Err(e) => return Err(e),
        }
    }
    Ok(out)
}
