//! Marking a flow finishing (`FLOW_FINISHING`, docs/ARCHITECTURE.md "Stranded connections")
//! through the data plane: switcher-ctl runs the never-attached `switcher_mark_finishing` XDP
//! program with `BPF_PROG_TEST_RUN` on a [`FinishMark`] (the flow's key, and the origin and
//! generation its entry held when read), and the program, if the entry still holds them, sets
//! the flag in place with a compare-and-swap and makes the CPUs' copies of the flow stale.
//!
//! Why not a map update: `BPF_MAP_UPDATE_ELEM` writes the whole value, so setting a flag from
//! user space is a read-modify-write of the entry, and whatever the data plane wrote in place
//! between the read and the write is undone: the client's newest acknowledgment number (which
//! an edge reset needs; an older one lies outside the viewer's window and is ignored) and TC
//! egress's `FLOW_ORIGIN_CLOSED`. The kernel has no map operation that changes part of a hash
//! map's value, and a program can: one syscall per finishing flow, and those are few (the
//! connections delivering a response when their origin is retired).
//!
//! Pins of a build without the program (an upgrade that kept the data plane) fall back to the
//! map update, with its race, logged once (`loader::Pinned`).

use std::path::Path;

use anyhow::{Context as _, Result, bail};
use aya::programs::{TestRun as _, TestRunOptions, Xdp};
use aya_obj::programs::XdpAttachType;
use switcher_common::FinishMark;

/// XDP verdicts of `switcher_mark_finishing` (`include/uapi/linux/bpf.h`).
const XDP_ABORTED: u32 = 0;
const XDP_DROP: u32 = 1;
const XDP_PASS: u32 = 2;

/// Sets `FLOW_FINISHING` on flows with the pinned `switcher_mark_finishing` program.
pub struct FinishMarker {
    prog: Xdp,
}

impl FinishMarker {
    /// Opens the program pinned at `pin`.
    pub fn open(pin: &Path) -> Result<FinishMarker> {
        let prog = Xdp::from_pin(pin, XdpAttachType::Interface)
            .with_context(|| format!("opening the pinned program {}", pin.display()))?;
        Ok(FinishMarker { prog })
    }

    /// Marks the flow `mark.key` finishing; false when it has no entry of `mark`'s origin and
    /// generation (it ended meanwhile, or its client port is another connection's now).
    pub fn mark(&self, mark: &FinishMark) -> Result<bool> {
        // SAFETY: `FinishMark` is `repr(C)`, 28 bytes without padding (asserted in
        // switcher-common): its bytes are what the program reads.
        let bytes = unsafe {
            std::slice::from_raw_parts(
                (mark as *const FinishMark).cast::<u8>(),
                size_of::<FinishMark>(),
            )
        };
        let opts = TestRunOptions {
            data_in: Some(bytes),
            repeat: 1,
            ..TestRunOptions::new()
        };
        let run = self
            .prog
            .test_run(opts)
            .context("BPF_PROG_TEST_RUN of switcher_mark_finishing")?;
        match run.return_value {
            XDP_PASS => Ok(true),
            XDP_DROP => Ok(false),
            XDP_ABORTED => bail!(
                "switcher_mark_finishing refused a {}-byte mark",
                bytes.len()
            ),
            v => bail!("switcher_mark_finishing returned {v}"),
        }
    }
}
