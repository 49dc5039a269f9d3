#!/usr/bin/env python3
"""Where `switcher_xdp` (or another program of the object) spends its time on a tracked
flow's packet (or another), by source line, and which x86 instructions it runs.

Usage (root, from the repository):
    cargo bench -p switcher-ctl --bench datapath --no-run
    python3 scripts/profile-datapath.py [SECONDS] [CPU] [PROGRAM] [PACKET]

PROGRAM is `switcher_xdp` (the default) or another program of the object, e.g. a `bench_tf_*`
step of the bench, on the same packet. PACKET is `tracked` (the default: a tracked flow's,
IPv4), `tracked6`, `syn` (the same SYN to the VIP, repeated), `elsewhere` (not for the
VIP) or `untracked` (a bare ACK of no flow); a `bench_tf_*` step takes only `tracked` and
`tracked6`.

It runs the data-path bench binary in its profile mode (SWITCHER_BENCH_PROFILE_SECS: the
packet through the program with BPF_PROG_TEST_RUN, repeat 1,000,000, and nothing else) under
`perf record -e cpu-clock` on one CPU, reads the loaded program's line info (the JIT address
of each BTF line-info record) and JIT image with the bpf syscall, and prints:
* the time in the program per repetition (its samples over the sample rate and the
  repetitions: with perf's own cost, and as noisy as the machine);
* the samples by line-info record: the source line the compiler gave those instructions;
* the path: the x86 instructions the packet runs, in order (`walk`), their number, and their
  number by source line. Unlike a time, the number is the same on every x86-64 machine with
  this kernel's JIT and does not move with the machine's load: a figure to compare builds by
  (BENCHMARKS.md, session 13).

Why by hand: Debian's perf and bpftool are built without libopcodes/libbfd, so neither can
annotate a JIT-compiled BPF program, and perf resolves only the first bytes of it to its
symbol. `cpu-clock` samples need no hardware counters (this project's VMs have none). A
sample lands on the instruction after one that waited, so a line's share is where time went,
give or take one line.

What it is not: a benchmark. It says where the time goes and what runs, not how fast; time
builds against each other with `cargo bench -p switcher-ctl --bench datapath`
(SWITCHER_BENCH_PEER_OBJ). To count another build's instructions, embed its object in the
bench binary: `SWITCHER_EBPF_OBJ=<object> cargo bench -p switcher-ctl --bench datapath
--no-run`.
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
OFF_JITED_INSNS = 24
OFF_NR_LINE_INFO = 148
OFF_LINE_INFO = 152
OFF_JITED_LINE_INFO = 160
OFF_NR_JITED_LINE_INFO = 168

# cpu-clock samples a second (one every 50 us).
SAMPLE_HZ = 20000

libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)


def bpf(cmd, attr):
    r = libc.syscall(SYS_BPF, cmd, ctypes.byref(attr), ctypes.sizeof(attr))
    if r < 0:
        raise OSError(ctypes.get_errno(), f"bpf({cmd})")
    return r


def line_info(prog_id):
    """(insn_off, jit address) of each line-info record, and the JIT image (its bytes)."""
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
    image = (ctypes.c_uint8 * jited_len)()
    ctypes.memset(info, 0, INFO_SIZE)
    struct.pack_into("I", info, OFF_JITED_LEN, jited_len)
    struct.pack_into("Q", info, OFF_JITED_INSNS, ctypes.addressof(image))
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
    return recs, bytes(image)


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
    packet = sys.argv[4] if len(sys.argv) > 4 else "tracked"
    bins = [b for b in glob.glob("target/release/deps/datapath-*") if not b.endswith(".d")]
    if not bins:
        sys.exit("build the bench first: cargo bench -p switcher-ctl --bench datapath --no-run")
    binary = max(bins, key=os.path.getmtime)
    data = "/tmp/profile-datapath.perf"
    env = dict(os.environ, SWITCHER_BENCH_PROFILE_SECS=str(seconds), SWITCHER_BENCH_PROFILE_PROG=prog,
               SWITCHER_BENCH_PROFILE_PACKET=packet)
    before = prog_ids(prog)
    perf = subprocess.Popen(
        ["perf", "record", "-q", "-e", "cpu-clock", "-F", str(SAMPLE_HZ), "-C", cpu, "-o", data,
         "--", binary, "--bench"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )
    prog_id = new_prog_id(prog, before, 120)
    recs, image = line_info(prog_id)
    jited_len = len(image)
    text = sources(prog_id)
    _, err = perf.communicate()
    if perf.returncode != 0:
        sys.exit(f"perf record failed: {err}")
    runs = re.search(r"profile: (\d+) calls of (\d+) repetitions", err)
    ips = [int(ip, 16) for ip in subprocess.run(
        ["perf", "script", "-i", data, "-F", "ip"], check=True, capture_output=True, text=True
    ).stdout.split()]
    start = recs[0][1]
    addrs = [a for _, a in recs]
    counts = collections.Counter()
    outside = 0
    for ip in ips:
        if start <= ip < start + jited_len:
            counts[bisect.bisect_right(addrs, ip) - 1] += 1
        else:
            outside += 1
    total = sum(counts.values())
    print(f"{total} samples in {prog} (id {prog_id}), {outside} elsewhere "
          f"(the test-run loop, the verifier at load)")
    if runs:
        reps = int(runs.group(1)) * int(runs.group(2))
        print(f"{runs.group(0)}: {total / SAMPLE_HZ / reps * 1e9:.1f} ns in the program per "
              f"repetition (its samples x 1/{SAMPLE_HZ} s / repetitions), with perf's own cost")
    print("share  insn  source line of the line-info record")
    for i, n in counts.most_common(40):
        src = text[i] if i < len(text) else "?"
        print(f"{100 * n / total:5.1f}% {recs[i][0]:5d}  {src[:100]}")
    hot_path(image, start, ips, total, addrs, text)


def hot_path(image, start, ips, total, line_addrs, line_text):
    """The JIT's x86 instructions the packet runs, in order, with their samples ([`walk`]).

    Their number, the path's length, is the same on any x86-64 machine with this kernel's
    JIT, unlike a time: a figure to compare builds by, next to the in-program time per
    repetition above. objdump decodes the image.
    """
    jit_file = "/tmp/profile-datapath.jit"
    with open(jit_file, "wb") as f:
        f.write(image)
    dis = subprocess.run(
        ["objdump", "-D", "-b", "binary", "-m", "i386:x86-64", "--no-show-raw-insn",
         f"--adjust-vma={start:#x}", jit_file],
        check=True, capture_output=True, text=True,
    ).stdout
    insns = []
    for line in dis.splitlines():
        m = re.match(r"^\s*([0-9a-f]+):\s+(.*)$", line)
        if m:
            insns.append((int(m.group(1), 16), m.group(2).strip()))
    addrs = [a for a, _ in insns]
    per = collections.Counter()
    for ip in ips:
        if start <= ip < start + len(image):
            per[bisect.bisect_right(addrs, ip) - 1] += 1
    path = walk(insns, per)
    on_path = sum(per[i] for i in path)
    print(f"\nJIT image at {start:#x}, {len(image)} bytes (saved in {jit_file})")
    print(f"path: {len(path)} x86 instructions from the entry to the return "
          f"({100 * on_path / max(total, 1):.1f}% of the program's samples on them; "
          f"{sum(1 for i in path if insns[i][1].startswith('call'))} calls)")
    by_line = collections.Counter()
    for i in path:
        r = bisect.bisect_right(line_addrs, insns[i][0]) - 1
        by_line[line_text[r] if 0 <= r < len(line_text) else "?"] += 1
    print("instructions on the path by source line (of the line-info record before them):")
    for src, n in sorted(by_line.items(), key=lambda kv: -kv[1]):
        print(f"{n:5d}  {src[:110]}")
    print("the path, with the source line of each line-info record it enters:")
    last = None
    for i in path:
        a, text = insns[i]
        r = bisect.bisect_right(line_addrs, a) - 1
        if r != last:
            last = r
            print(f"{'':21}; {line_text[r][:100] if 0 <= r < len(line_text) else '?'}")
        print(f"{100 * per[i] / max(total, 1):5.1f}% {a - start:6x}  {text}")


def walk(insns, per):
    """The instructions the packet runs, in order: the path from the entry to an exit (the
    jump to the kernel's return thunk, or a `ret`) with the most samples on it. Every
    repetition takes the same path, so all the samples are on it, but those of a rare branch
    (the flow cache's periodic refresh), which are left out by counting only instructions
    with 0.01% of the samples or more; between paths with as many samples (a compare and
    branch the CPU fuses is rarely sampled itself, so a side may have none of its own), the
    shorter wins: an instruction without samples is more likely not run."""
    floor = sum(per.values()) / 10000
    sys.setrecursionlimit(max(sys.getrecursionlimit(), 4 * len(insns) + 100))
    addrs = {a: i for i, (a, _) in enumerate(insns)}

    def target(text):
        m = re.search(r"\s(0x[0-9a-f]+)$", text)
        return addrs.get(int(m.group(1), 16)) if m else None

    def successors(i):
        text = insns[i][1]
        if text.startswith("ret"):
            return []
        if text.startswith("jmp"):
            t = target(text)
            return [] if t is None else [t]
        nxt = [i + 1] if i + 1 < len(insns) else []
        if text.startswith("j"):
            t = target(text)
            return nxt + ([t] if t is not None else [])
        return nxt

    best, choice, busy = {}, {}, set()

    def heaviest(i):
        """(Samples, -length) of the heaviest path from `i` to an exit (a loop back counts
        nothing)."""
        if i in best:
            return best[i]
        if i in busy:
            return (0, 0)
        busy.add(i)
        w, pick = (0, 0), None
        for s in successors(i):
            sw = heaviest(s)
            if pick is None or sw > w:
                w, pick = sw, s
        busy.discard(i)
        best[i] = ((per[i] if per[i] >= floor else 0) + w[0], w[1] - 1)
        choice[i] = pick
        return best[i]

    heaviest(0)
    path, seen, i = [], set(), 0
    while i is not None and i not in seen:
        seen.add(i)
        path.append(i)
        i = choice.get(i)
    return path


if __name__ == "__main__":
    main()
