#!/usr/bin/env python3
"""Where `switcher_xdp` (or another program of the object) spends its time on a tracked
flow's packet, by source line.

Usage (root, from the repository):
    cargo bench -p switcher-ctl --bench datapath --no-run
    python3 scripts/profile-datapath.py [SECONDS] [CPU] [PROGRAM]

PROGRAM is `switcher_xdp` (the default) or another program of the object, e.g. a `bench_tf_*`
step of the bench, on the same packet.

It runs the data-path bench binary in its profile mode (SWITCHER_BENCH_PROFILE_SECS: the
tracked flow's packet through `switcher_xdp` with BPF_PROG_TEST_RUN, repeat 1,000,000, and
nothing else) under `perf record -e cpu-clock` on one CPU, reads the loaded program's line
info (the JIT address of each BTF line-info record) with the bpf syscall, and sums the samples
whose address falls in the program by line-info record: the source line the compiler gave
those instructions.

Why by hand: Debian's perf and bpftool are built without libopcodes/libbfd, so neither can
annotate a JIT-compiled BPF program, and perf resolves only the first bytes of it to its
symbol. `cpu-clock` samples need no hardware counters (this project's VMs have none). A
sample lands on the instruction after one that waited, so a line's share is where time went,
give or take one line.

What it is not: a benchmark. It says where the time goes, not how much; compare builds with
`cargo bench -p switcher-ctl --bench datapath` (SWITCHER_BENCH_PEER_OBJ).
"""

import bisect
import collections
import ctypes
import ctypes.util
import glob
import os
import re
import struct
import subprocess
import sys
import time

SYS_BPF = 321  # x86-64
BPF_PROG_GET_FD_BY_ID = 13
BPF_OBJ_GET_INFO_BY_FD = 15
# struct bpf_prog_info offsets (include/uapi/linux/bpf.h).
INFO_SIZE = 240
OFF_JITED_LEN = 16
OFF_NR_LINE_INFO = 148
OFF_LINE_INFO = 152
OFF_JITED_LINE_INFO = 160
OFF_NR_JITED_LINE_INFO = 168

libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)


def bpf(cmd, attr):
    r = libc.syscall(SYS_BPF, cmd, ctypes.byref(attr), ctypes.sizeof(attr))
    if r < 0:
        raise OSError(ctypes.get_errno(), f"bpf({cmd})")
    return r


def line_info(prog_id):
    """(insn_off, jit address) of each line-info record, and the JIT image's length."""
    attr = (ctypes.c_uint8 * 128)()
    struct.pack_into("I", attr, 0, prog_id)
    fd = bpf(BPF_PROG_GET_FD_BY_ID, attr)
    info = (ctypes.c_uint8 * INFO_SIZE)()

    def get():
        a = (ctypes.c_uint8 * 128)()
        struct.pack_into("IIQ", a, 0, fd, INFO_SIZE, ctypes.addressof(info))
        bpf(BPF_OBJ_GET_INFO_BY_FD, a)

    get()
    (jited_len,) = struct.unpack_from("I", info, OFF_JITED_LEN)
    (nr,) = struct.unpack_from("I", info, OFF_NR_LINE_INFO)
    nr_jited, rec, jrec = struct.unpack_from("III", info, OFF_NR_JITED_LINE_INFO)
    lines = (ctypes.c_uint8 * (nr * rec))()
    jlines = (ctypes.c_uint8 * (nr_jited * jrec))()
    ctypes.memset(info, 0, INFO_SIZE)
    struct.pack_into("I", info, OFF_NR_LINE_INFO, nr)
    struct.pack_into("Q", info, OFF_LINE_INFO, ctypes.addressof(lines))
    struct.pack_into("Q", info, OFF_JITED_LINE_INFO, ctypes.addressof(jlines))
    struct.pack_into("III", info, OFF_NR_JITED_LINE_INFO, nr_jited, rec, jrec)
    get()
    os.close(fd)
    recs = [
        (struct.unpack_from("I", lines, i * rec)[0], struct.unpack_from("Q", jlines, i * jrec)[0])
        for i in range(min(nr, nr_jited))
    ]
    return recs, jited_len


def sources(prog_id):
    """The source line of each line-info record, in order, from bpftool's dump."""
    dump = subprocess.run(
        ["bpftool", "prog", "dump", "xlated", "id", str(prog_id)],
        check=True, capture_output=True, text=True,
    ).stdout
    return [l[1:].strip() for l in dump.splitlines() if l.startswith(";")]


def prog_ids(name):
    """Ids of the loaded XDP programs called `name`."""
    out = subprocess.run(["bpftool", "prog", "show"], capture_output=True, text=True).stdout
    return {int(m.group(1)) for m in re.finditer(rf"^(\d+): xdp\s+name {name}\b", out, re.M)}


def new_prog_id(name, before, timeout):
    """The id of a program `name` loaded since `before` was listed (the bench's, not one a
    running stack or a test holds)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        new = prog_ids(name) - before
        if new:
            return max(new)
        time.sleep(0.2)
    sys.exit(f"no new program {name} loaded within {timeout} s")


def main():
    seconds = int(sys.argv[1]) if len(sys.argv) > 1 else 20
    cpu = sys.argv[2] if len(sys.argv) > 2 else str(os.cpu_count() - 1)
    prog = sys.argv[3] if len(sys.argv) > 3 else "switcher_xdp"
    bins = [b for b in glob.glob("target/release/deps/datapath-*") if not b.endswith(".d")]
    if not bins:
        sys.exit("build the bench first: cargo bench -p switcher-ctl --bench datapath --no-run")
    binary = max(bins, key=os.path.getmtime)
    data = "/tmp/profile-datapath.perf"
    env = dict(os.environ, SWITCHER_BENCH_PROFILE_SECS=str(seconds), SWITCHER_BENCH_PROFILE_PROG=prog)
    before = prog_ids(prog)
    perf = subprocess.Popen(
        ["perf", "record", "-q", "-e", "cpu-clock", "-F", "20000", "-C", cpu, "-o", data,
         "--", binary, "--bench"],
        env=env, stdout=subprocess.DEVNULL,
    )
    prog_id = new_prog_id(prog, before, 120)
    recs, jited_len = line_info(prog_id)
    text = sources(prog_id)
    if perf.wait() != 0:
        sys.exit("perf record failed")
    ips = subprocess.run(
        ["perf", "script", "-i", data, "-F", "ip"], check=True, capture_output=True, text=True
    ).stdout.split()
    start = recs[0][1]
    addrs = [a for _, a in recs]
    counts = collections.Counter()
    outside = 0
    for ip in ips:
        ip = int(ip, 16)
        if start <= ip < start + jited_len:
            counts[bisect.bisect_right(addrs, ip) - 1] += 1
        else:
            outside += 1
    total = sum(counts.values())
    print(f"{total} samples in {prog} (id {prog_id}), {outside} elsewhere "
          f"(the test-run loop, the verifier at load)")
    print("share  insn  source line of the line-info record")
    for i, n in counts.most_common(40):
        src = text[i] if i < len(text) else "?"
        print(f"{100 * n / total:5.1f}% {recs[i][0]:5d}  {src[:100]}")


if __name__ == "__main__":
    main()
