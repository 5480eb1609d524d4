"""Runs a command and prints its wall time (s) and peak resident memory (MiB), from wait4.

    python measure.py CMD ARG...    ->  "wall_s=1.234 peak_rss_mib=456.7 rc=0"
The command's own output goes to /dev/null (stderr kept for errors).
"""
import os
import subprocess
import sys
import time

start = time.perf_counter()
proc = subprocess.Popen(sys.argv[1:], stdout=subprocess.DEVNULL)
_, status, usage = os.wait4(proc.pid, 0)
wall = time.perf_counter() - start
# ru_maxrss is in KiB on Linux; a re-exec'd process (xray's malloc tunables) keeps its pid.
print(f"wall_s={wall:.4f} peak_rss_mib={usage.ru_maxrss / 1024:.1f} rc={os.waitstatus_to_exitcode(status)}")
