#!/usr/bin/env bash
# Measures the transport-probe servers (POSIX sockets + threads vs SwiftNIO)
# with fio's NBD engine over Unix sockets, interleaving servers and
# workloads, and prints the medians. See docs/decisions/transport.md.
#
#   bench/transport-probe/run.sh            # 3 repetitions, 5 s + 1 s ramp each
#   REPS=1 RUNTIME=2 bench/transport-probe/run.sh
#
# Needs fio (with the nbd engine, Debian's fio) and nbdinfo (libnbd-bin).
set -euo pipefail
cd "$(dirname "$0")"
REPS=${REPS:-3}
RUNTIME=${RUNTIME:-5}
RAMP=${RAMP:-1}
WORKERS=${WORKERS:-4}
POOL=${POOL:-4}
for tool in fio nbdinfo python3; do
    command -v "$tool" >/dev/null || { echo "run.sh: $tool is not installed" >&2; exit 1; }
done

swift build -c release >&2
BIN="$(swift build -c release --show-bin-path)/transport-probe"
WORK="$(mktemp -d /dev/shm/transport-probe.XXXXXX)"
mkdir -p ../out
RESULTS="${RESULTS:-../out/transport-probe.csv}"
PIDS=()
cleanup() {
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
    rm -rf "$WORK"
}
trap cleanup EXIT

# name|arguments. The file export lives on tmpfs: pread/pwrite are real
# system calls but never wait for a device, so "file" measures syscall and
# thread-hop cost, not disk latency.
SERVERS=(
    "posix-mem|posix --workers $WORKERS"
    "nio-mem|nio"
    "posix-mem-2w|posix --workers 2"
    "posix-mem-stdmutex|posix --workers $WORKERS --lock mutex"
    "posix-file|posix --workers $WORKERS --file $WORK/export.img"
    "nio-file-inline|nio --file $WORK/export.img"
    "nio-file-pool|nio --pool $POOL --file $WORK/export.img"
)
declare -A PID_OF SOCKET_OF
for entry in "${SERVERS[@]}"; do
    name="${entry%%|*}"
    socket="$WORK/$name.sock"
    # shellcheck disable=SC2086  # the argument list is split on purpose
    "$BIN" ${entry#*|} --socket "$socket" >"$WORK/$name.log" 2>&1 &
    PIDS+=("$!")
    PID_OF[$name]=$!
    SOCKET_OF[$name]=$socket
done
for entry in "${SERVERS[@]}"; do
    name="${entry%%|*}"
    for _ in $(seq 100); do
        nbdinfo --size "nbd+unix:///?socket=${SOCKET_OF[$name]}" >/dev/null 2>&1 && break
        kill -0 "${PID_OF[$name]}" 2>/dev/null || { cat "$WORK/$name.log" >&2; exit 1; }
        sleep 0.2
    done
    nbdinfo --size "nbd+unix:///?socket=${SOCKET_OF[$name]}" >/dev/null
done

# name|rw|block size|queue depth
WORKLOADS=(
    "4k-randread-qd32|randread|4k|32"
    "4k-randwrite-qd32|randwrite|4k|32"
    "1M-read-qd4|read|1M|4"
    "1M-write-qd4|write|1M|4"
)
TICKS=$(getconf CLK_TCK)
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }

LOAD_BEFORE="$(cut -d' ' -f1-3 /proc/loadavg)"
echo "rep,workload,server,iops,mbps,cpu_s,wall_s,clat_mean_us,clat_p99_us" >"$RESULTS"
count=${#SERVERS[@]}
for rep in $(seq "$REPS"); do
    for workload in "${WORKLOADS[@]}"; do
        IFS='|' read -r wname rw bs qd <<<"$workload"
        # Rotate the server order each repetition so none always runs first.
        for i in $(seq 0 $((count - 1))); do
            entry="${SERVERS[$(((i + rep) % count))]}"
            name="${entry%%|*}"
            pid=${PID_OF[$name]}
            json="$WORK/$rep-$wname-$name.json"
            before=$(cpu_ticks "$pid")
            start=$(date +%s.%N)
            fio --name=probe --ioengine=nbd --uri="nbd+unix:///?socket=${SOCKET_OF[$name]}" \
                --rw="$rw" --bs="$bs" --iodepth="$qd" --numjobs=1 \
                --time_based --runtime="$RUNTIME" --ramp_time="$RAMP" \
                --output-format=json --output="$json" >/dev/null
            end=$(date +%s.%N)
            after=$(cpu_ticks "$pid")
            python3 - "$json" "$rep" "$wname" "$name" "$before" "$after" "$TICKS" "$start" "$end" >>"$RESULTS" <<'PY'
import json, sys
path, rep, workload, server, before, after, ticks, start, end = sys.argv[1:]
job = json.load(open(path))["jobs"][0]
side = job["write"] if job["write"]["io_bytes"] > job["read"]["io_bytes"] else job["read"]
cpu = (int(after) - int(before)) / int(ticks)
clat = side["clat_ns"]
print(f'{rep},{workload},{server},{side["iops"]:.0f},{side["bw_bytes"] / 1e6:.1f},{cpu:.2f},'
      f'{float(end) - float(start):.2f},{clat["mean"] / 1e3:.1f},{clat["percentile"]["99.000000"] / 1e3:.1f}')
PY
            tail -n 1 "$RESULTS" >&2
        done
    done
done

echo "Load average (1/5/15 min) before: $LOAD_BEFORE, after: $(cut -d' ' -f1-3 /proc/loadavg) on $(nproc) cores."
echo
SERVER_ORDER="$(printf '%s,' "${SERVERS[@]%%|*}")" python3 summarize.py "$RESULTS"
