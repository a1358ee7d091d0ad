#!/usr/bin/env python3
"""Prints the median of each (workload, server) over the runs in one or more
results CSVs written by run.sh, as a Markdown table. Ranges are min-max over
the repetitions, because the numbers come from a small, shared machine.

    SERVER_ORDER=posix-mem,nio-mem python3 summarize.py results.csv [more.csv ...]
"""
import csv
import os
import statistics
import sys

rows = [row for path in sys.argv[1:] for row in csv.DictReader(open(path))]
workloads = list(dict.fromkeys(row["workload"] for row in rows))
servers = [s for s in os.environ.get("SERVER_ORDER", "").split(",") if s]
servers += [s for s in dict.fromkeys(row["server"] for row in rows) if s not in servers]
groups = {}
for row in sorted(rows, key=lambda r: (workloads.index(r["workload"]), servers.index(r["server"]))):
    groups.setdefault((row["workload"], row["server"]), []).append(row)


def cores(row):
    # CPU is taken over the whole fio run (ramp and connection included), so
    # cores used = CPU time / wall time, and per-I/O cost = cores / IOPS.
    return float(row["cpu_s"]) / float(row["wall_s"])


def per_io(row):
    return cores(row) / float(row["iops"]) * 1e6


print("| workload | server | IOPS (min–max) | MB/s | server CPU (cores) | server CPU µs/IO (min–max) "
      "| clat mean µs | clat p99 µs |")
print("|---|---|---:|---:|---:|---:|---:|---:|")
for (workload, server), group in groups.items():
    iops = [float(r["iops"]) for r in group]
    costs = [per_io(r) for r in group]
    med = lambda key: statistics.median(float(r[key]) for r in group)
    print(f"| {workload} | {server} | {statistics.median(iops):.0f} ({min(iops):.0f}–{max(iops):.0f}) "
          f"| {med('mbps'):.0f} | {statistics.median(cores(r) for r in group):.2f} "
          f"| {statistics.median(costs):.1f} ({min(costs):.1f}–{max(costs):.1f}) "
          f"| {med('clat_mean_us'):.0f} | {med('clat_p99_us'):.0f} |")
print(f"\n{len(rows)} runs; medians of {max(len(g) for g in groups.values())} interleaved repetitions.")
