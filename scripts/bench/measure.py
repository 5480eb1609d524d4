"""Runs a command and prints its wall time (s) and peak memory (MiB).

    python measure.py [--log FILE] CMD ARG...  ->  "wall_s=1.234 peak_mib=456.7 rc=0"

Peak memory is the larger of the command's own peak resident set (wait4's ru_maxrss, exact) and
the sampled peak of the proportional set size (PSS) summed over the command and all its
descendants. The second counts the workers of a PyTorch DataLoader once each, with the pages
they share with their parent split between them rather than counted again.

Reading PSS walks every page table of the process (/proc/PID/smaps_rollup): for a process of
4 GB that costs the sampler several milliseconds of CPU, taken from the measured command on a
small machine. Sampled every 20 ms, it halved xray's fine-tuning speed on 2 cores. So the
interval adapts: at least 20 ms, and 30 times what the last sample cost, which holds the
sampler to about 3% of one core.
The command's output goes to FILE with --log, else to /dev/null (stderr kept for errors).
"""
import os
import subprocess
import sys
import time


def children(pid):
    """Direct children of pid, from /proc/PID/task/*/children."""
    out = []
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{task}/children") as f:
                out += [int(c) for c in f.read().split()]
    except OSError:
        pass
    return out


def pss_kib(pid):
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def tree_pss_kib(root):
    total, todo = 0, [root]
    while todo:
        pid = todo.pop()
        total += pss_kib(pid)
        todo += children(pid)
    return total


def main():
    args = sys.argv[1:]
    log = None
    if args[:1] == ["--log"]:
        log, args = open(args[1], "w"), args[2:]
    start = time.perf_counter()
    proc = subprocess.Popen(args, stdout=log or subprocess.DEVNULL,
                            stderr=log or None)
    peak_tree = 0
    while True:
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            break
        sampled = time.perf_counter()
        peak_tree = max(peak_tree, tree_pss_kib(proc.pid))
        time.sleep(max(0.02, 30 * (time.perf_counter() - sampled)))
    wall = time.perf_counter() - start
    # ru_maxrss is in KiB on Linux; a re-exec'd process (xray's malloc tunables) keeps its pid.
    peak = max(usage.ru_maxrss, peak_tree) / 1024
    print(f"wall_s={wall:.4f} peak_mib={peak:.1f} rc={os.waitstatus_to_exitcode(status)}")


if __name__ == "__main__":
    main()
