#!/usr/bin/env python3
"""bench/chain/issue7-report.py - the tables of bench/issue7.sh.

  issue7-report.py crypt PEERS_OUTDIR SAMPLE_DIR
      For each bulkhead fio run of peers.sh (PEERS_OUTDIR/fio/bulkhead-W-R.json)
      finds the cryptd sample log (bench/chain/lib.sh bh_sample) covering the
      run's measured window and prints
        RESULT bulkhead W R crypt_cpu_us_per_io X   (cryptd CPU in the window / I/Os in it)
        RESULT bulkhead W R cryptd_vmhwm_kib X
  issue7-report.py tables RAW
      Markdown tables from RAW (peers.sh results, the lines above, wa.sh's
      WA and MEM lines, scale.sh's SCALE lines, issue7.sh's I7META lines).
"""
import glob
import json
import os
import statistics
import sys
from collections import defaultdict

HZ = os.sysconf("SC_CLK_TCK")
WORKLOADS = ["randread4k", "randwrite4k", "seqread1m", "seqwrite1m"]
LABEL = {"randread4k": "4k random read QD32", "randwrite4k": "4k random write QD32",
         "seqread1m": "1M sequential read QD4", "seqwrite1m": "1M sequential write QD4"}
PRIMARY = {"randread4k": "iops", "randwrite4k": "iops", "seqread1m": "MBps", "seqwrite1m": "MBps"}
UNIT = {"iops": "IOPS", "MBps": "MB/s"}
D2, B, R2 = "D2_qemu_luks_2hop", "B_nbdkit_luks", "R2_nbdkit"
GOAL_D2 = {"randread4k": 2.0, "randwrite4k": 2.0, "seqread1m": 3.0, "seqwrite1m": 3.0}


def crypt(peers_dir, sample_dir):
    logs = []
    for path in glob.glob(os.path.join(sample_dir, "cryptd-*.log")):
        rows = []
        with open(path) as f:
            for line in f:
                p = line.split()
                if len(p) == 3:
                    rows.append((float(p[0]), int(p[1]), int(p[2])))
        if rows:
            logs.append(rows)
    for path in sorted(glob.glob(os.path.join(peers_dir, "fio", "bulkhead-*-*.json"))):
        name = os.path.basename(path)[len("bulkhead-"):-len(".json")]
        wl, rep = name.rsplit("-", 1)
        try:
            with open(path) as f:
                j = json.load(f)
        except (OSError, ValueError):
            continue
        job = j["jobs"][0]
        if job.get("error", 1) != 0:
            continue
        end = j["timestamp_ms"] / 1000.0
        runtime = max(job["read"]["runtime"], job["write"]["runtime"]) / 1000.0
        ios = job["read"]["total_ios"] + job["write"]["total_ios"]
        start = end - runtime
        for rows in logs:
            if rows[0][0] <= start and rows[-1][0] >= end - 0.25:
                def ticks_at(t):
                    prev = rows[0]
                    for r in rows:
                        if r[0] >= t:
                            if r[0] == prev[0]:
                                return r[1]
                            return prev[1] + (r[1] - prev[1]) * (t - prev[0]) / (r[0] - prev[0])
                        prev = r
                    return rows[-1][1]
                if ios > 0:
                    us = (ticks_at(end) - ticks_at(start)) / HZ * 1e6 / ios
                    print(f"RESULT bulkhead {wl} {rep} crypt_cpu_us_per_io {us:.2f}")
                print(f"RESULT bulkhead {wl} {rep} cryptd_vmhwm_kib {rows[-1][2]}")
                break


def med(xs):
    return statistics.median(xs) if xs else None


def fmt(x):
    if x is None:
        return "-"
    if x >= 10000:
        return f"{x / 1000:.1f}k"
    if x >= 100:
        return f"{x:.0f}"
    if x >= 10:
        return f"{x:.1f}"
    return f"{x:.2f}"


def rng(xs):
    if not xs:
        return "-"
    if len(xs) == 1:
        return fmt(xs[0])
    return f"{fmt(med(xs))} [{fmt(min(xs))}–{fmt(max(xs))}]"


def ratio_cell(xs, goal=None, higher=True):
    if not xs:
        return "-"
    m = med(xs)
    s = f"{m:.2f}" if len(xs) == 1 else f"{m:.2f} [{min(xs):.2f}–{max(xs):.2f}]"
    if goal is not None:
        ok = m >= goal if higher else m <= goal
        s += " ✓" if ok else " ✗"
    return s


def paired(v, num, den, wl, metric):
    """Per-rep ratios num/den of one metric (peers.sh RESULT values)."""
    out = []
    for rep, x in v[num][wl][metric].items():
        y = v[den][wl][metric].get(rep)
        if y:
            out.append(x / y)
    return out


def tables(raw):
    v = defaultdict(lambda: defaultdict(lambda: defaultdict(dict)))   # srv wl metric rep -> value
    sc = defaultdict(lambda: defaultdict(dict))                         # cell metric rep -> value
    wa, mem, meta, scalemeta, errors = [], [], [], [], []
    with open(raw) as f:
        for line in f:
            p = line.split()
            if not p:
                continue
            if p[0] == "RESULT" and len(p) == 6:
                if p[4] == "error":
                    errors.append(f"peers {p[1]} {p[2]} rep {p[3]}")
                else:
                    v[p[1]][p[2]][p[4]][p[3]] = float(p[5])
            elif p[0] == "SCALE" and len(p) == 5:
                if p[3] == "error":
                    errors.append(f"scale {p[1]} rep {p[2]}")
                else:
                    sc[p[1]][p[3]][p[2]] = float(p[4])
            elif p[0] == "WA":
                wa.append(dict(zip(p[2::2], p[3::2])) | {"name": p[1]})
            elif p[0] == "MEM":
                mem.append(dict(zip(p[1::2], p[2::2])))
            elif p[0] == "I7META":
                meta.append(" ".join(p[1:]))
            elif p[0] == "SCALEMETA":
                scalemeta.append(" ".join(p[1:]))
            elif p[0] == "META":
                meta.append(" ".join(p))

    out = []
    w = out.append
    servers = [s for s in ["bulkhead", D2, B, R2] if s in v]
    if servers:
        w("### A. Peers: rate, latency, CPU per I/O (median [min–max] over the reps)\n")
        w("Rate is IOPS for 4k, MB/s for 1M. Latency: fio's mean total latency and p99 completion "
          "latency (µs). CPU µs/IO: crypt = bulkhead-cryptd alone (its CPU time in fio's measured window / I/Os); "
          "server = all processes of the server (peers.sh: the process group, bulkhead = cryptd + storaged).\n")
        w("| workload | server | rate | mean lat µs | p99 µs | crypt CPU µs/IO | server CPU µs/IO |")
        w("|---|---|---|---|---|---|---|")
        for wl in WORKLOADS:
            for s in servers:
                d = v[s][wl]
                if not d:
                    continue
                prim = PRIMARY[wl]
                w(f"| {LABEL[wl]} | {s} | {rng(list(d[prim].values()))} {UNIT[prim]} | "
                  f"{rng(list(d['lat_mean_us'].values()))} | {rng(list(d['lat_p99_us'].values()))} | "
                  f"{rng(list(d['crypt_cpu_us_per_io'].values())) if s == 'bulkhead' else ''} | "
                  f"{rng(list(d['srv_cpu_us_per_io'].values()))} |")
        w("")
        if "bulkhead" in v:
            w("### B. Paired ratios bulkhead / peer (same rep, same workload; median [min–max]; ✓ = median meets the goal)\n")
            w("| workload | ×D2_qemu_luks_2hop (goal) | ×B_nbdkit_luks (goal 1.0) | ×R2_nbdkit (goal 0.8) | server CPU/IO ×B | server CPU/IO ×D2 |")
            w("|---|---|---|---|---|---|")
            for wl in WORKLOADS:
                if not v["bulkhead"][wl]:
                    continue
                prim = PRIMARY[wl]
                g = GOAL_D2[wl]
                w(f"| {LABEL[wl]} | {ratio_cell(paired(v, 'bulkhead', D2, wl, prim), g)} ({g:g}x) | "
                  f"{ratio_cell(paired(v, 'bulkhead', B, wl, prim), 1.0)} | "
                  f"{ratio_cell(paired(v, 'bulkhead', R2, wl, prim), 0.8)} | "
                  f"{ratio_cell(paired(v, 'bulkhead', B, wl, 'srv_cpu_us_per_io'))} | "
                  f"{ratio_cell(paired(v, 'bulkhead', D2, wl, 'srv_cpu_us_per_io'))} |")
            w("")

    if wa:
        w("### C. Write amplification (bench/wa.sh: bytes cryptd writes to storage per byte fio writes)\n")
        w("| case | consumer MiB | storage MiB | consumer writes / flushes | WA | goal |")
        w("|---|---|---|---|---|---|")
        desc = {"r4k_16k": "4k random writes QD1, FLUSH every 1000 writes",
                "r4k_160k": "4k random writes QD1, FLUSH every 1000 writes (10x longer)",
                "s1m_end": "1 MiB sequential writes, one FLUSH at the end",
                "s1m_f64": "1 MiB sequential writes, FLUSH every 64 writes"}
        for r in wa:
            goal = 1.2 if r["name"].startswith("r4k") else 1.05
            x = float(r["wa"])
            w(f"| {desc.get(r['name'], r['name'])} (`{r['name']}`) | {int(r['consumer_bytes']) / 2**20:.0f} | "
              f"{(int(r['storage_write_bytes']) - int(r['idle_write_bytes'])) / 2**20:.0f} | "
              f"{r['consumer_writes']} / {r['consumer_flushes']} | {x:.3f} {'✓' if x <= goal else '✗'} | ≤ {goal} |")
        w("")

    hwm_peers = [x for s in v.get("bulkhead", {}).values() for x in s.get("cryptd_vmhwm_kib", {}).values()]
    sm = {}
    for line in scalemeta:
        p = line.split()
        for i in range(len(p) - 1):
            sm[p[i]] = p[i + 1]
    if mem or hwm_peers or "cryptd_vmhwm_kib" in sm:
        w("### D. Crypt domain peak memory (VmHWM of bulkhead-cryptd)\n")
        cache = [m for m in meta if m.startswith("cache ")]
        if cache:
            w("Configured: " + cache[-1][len("cache "):] + "\n")
        w("| run | VmHWM MiB | notes |")
        w("|---|---|---|")
        if hwm_peers:
            w(f"| peers runs (1 GiB volume, one per run) | {max(hwm_peers) / 1024:.0f} (max of {len(hwm_peers)}) | |")
        if "cryptd_vmhwm_kib" in sm:
            w(f"| scale runs (one cryptd, all cells, {sm.get('small', '?')} + {sm.get('big', '?')} + "
              f"{sm.get('multi', '?')} x {sm.get('multi_size', '?')} volumes) | {int(sm['cryptd_vmhwm_kib']) / 1024:.0f} | "
              f"RSS idle {int(sm.get('cryptd_rss_kib_idle', 0)) / 1024:.0f} MiB, after fill "
              f"{int(sm.get('cryptd_rss_kib_after_fill', 0)) / 1024:.0f}, at end {int(sm.get('cryptd_rss_kib_end', 0)) / 1024:.0f} |")
        for m in mem:
            series = [int(x) for x in m.get("rss_every_5s_kib", "").split(",") if x]
            half = series[len(series) // 2:] if len(series) >= 2 else series
            growth = f"{(half[-1] - half[0]) / 1024:+.0f} MiB over the second half" if len(half) >= 2 else "-"
            w(f"| 4k random writes QD32 on a {m.get('vsize')} sparse volume, {m.get('writes')} writes "
              f"(checkpoint-records {m.get('records')}) | {int(m['vmhwm_kib']) / 1024:.0f} | "
              f"RSS start {int(m['rss_start_kib']) / 1024:.0f} MiB, end {int(m['rss_end_kib']) / 1024:.0f} MiB, "
              f"{growth}; every 5 s (MiB): {', '.join(str(x // 1024) for x in series)} |")
        w("")

    def section(prefix):
        return any(c.startswith(prefix) for c in sc)

    if sc:
        def cell(name, metric):
            return list(sc[name][metric].values())

        def pr(num, den, metric):
            out_ = []
            for rep, x in sc[num][metric].items():
                y = sc[den][metric].get(rep)
                if y:
                    out_.append(x / y)
            return out_

        if section("size-"):
            w(f"### E. Volume size: {sm.get('small', '?')} against a {sm.get('big', '?')} sparse volume "
              f"(same data: {sm.get('chunks', '?')} chunks of 1 MiB, spread {int(sm.get('stride_bytes', 0)) // 2**20} MiB apart "
              "on the big volume; bulkhead alone)\n")
            w("| workload | small: rate | big: rate | big/small (goal ≥ 0.8) | lat mean µs small / big | p99 µs small / big | crypt CPU µs/IO small / big |")
            w("|---|---|---|---|---|---|---|")
            for wl in WORKLOADS:
                a, b_ = f"size-small-{wl}", f"size-big-{wl}"
                if a not in sc and b_ not in sc:
                    continue
                prim = PRIMARY[wl]
                w(f"| {LABEL[wl]} | {rng(cell(a, prim))} | {rng(cell(b_, prim))} | {ratio_cell(pr(b_, a, prim), 0.8)} | "
                  f"{fmt(med(cell(a, 'lat_mean_us')))} / {fmt(med(cell(b_, 'lat_mean_us')))} | "
                  f"{fmt(med(cell(a, 'lat_p99_us')))} / {fmt(med(cell(b_, 'lat_p99_us')))} | "
                  f"{fmt(med(cell(a, 'crypt_cpu_us_per_io')))} / {fmt(med(cell(b_, 'crypt_cpu_us_per_io')))} |")
            w("")
        if section("vol"):
            w(f"### F. Volumes served at once: 1 against {sm.get('multi', '?')} volumes of {sm.get('multi_size', '?')} "
              "(one fio job and connection per volume, each at the workload's QD; rates summed)\n")
            w("| workload | 1 volume | N volumes (sum) | N/1 | p99 µs 1 / N | crypt CPU µs/IO 1 / N | server CPU µs/IO 1 / N |")
            w("|---|---|---|---|---|---|---|")
            for wl in WORKLOADS:
                a, b_ = f"vol1-{wl}", f"vol8-{wl}"
                if a not in sc and b_ not in sc:
                    continue
                prim = PRIMARY[wl]
                w(f"| {LABEL[wl]} | {rng(cell(a, prim))} | {rng(cell(b_, prim))} | {ratio_cell(pr(b_, a, prim))} | "
                  f"{fmt(med(cell(a, 'lat_p99_us')))} / {fmt(med(cell(b_, 'lat_p99_us')))} | "
                  f"{fmt(med(cell(a, 'crypt_cpu_us_per_io')))} / {fmt(med(cell(b_, 'crypt_cpu_us_per_io')))} | "
                  f"{fmt(med(cell(a, 'srv_cpu_us_per_io')))} / {fmt(med(cell(b_, 'srv_cpu_us_per_io')))} |")
            w("")
        if section("qd"):
            w(f"### G. Queue depth: 4k random I/O on the {sm.get('small', '?')} volume\n")
            w("| workload | QD | IOPS | mean lat µs | p99 µs | crypt CPU µs/IO | server CPU µs/IO |")
            w("|---|---|---|---|---|---|---|")
            for wl in ["randread4k", "randwrite4k"]:
                for q in [1, 8, 32]:
                    c = f"qd{q}-{wl}"
                    if c not in sc:
                        continue
                    w(f"| {LABEL[wl].split(' QD')[0]} | {q} | {rng(cell(c, 'iops'))} | {fmt(med(cell(c, 'lat_mean_us')))} | "
                      f"{fmt(med(cell(c, 'lat_p99_us')))} | {fmt(med(cell(c, 'crypt_cpu_us_per_io')))} | "
                      f"{fmt(med(cell(c, 'srv_cpu_us_per_io')))} |")
            w("")

    if errors:
        w("### Failed runs\n")
        for e in errors:
            w(f"- {e}")
        w("")
    w("### Run metadata\n")
    w("```")
    for m in meta + ["scale " + s for s in scalemeta]:
        w(m)
    w("```")
    print("\n".join(out))


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "crypt":
        crypt(sys.argv[2], sys.argv[3])
    elif len(sys.argv) == 3 and sys.argv[1] == "tables":
        tables(sys.argv[2])
    else:
        sys.exit(__doc__)
