#!/usr/bin/env bash
# Counts what each server does per 4k I/O at QD32: system calls (strace -c,
# which slows the server, so only the counts mean anything) and context
# switches and CPU time (perf stat, software events only). Less sensitive to
# a busy machine than run.sh's throughput. See docs/decisions/transport.md.
#
#   bench/transport-probe/syscalls.sh      # needs fio, strace, perf
set -euo pipefail
cd "$(dirname "$0")"
IO_SIZE=${IO_SIZE:-400M}
for tool in fio strace perf python3 nbdinfo; do
    command -v "$tool" >/dev/null || { echo "syscalls.sh: $tool is not installed" >&2; exit 1; }
done
swift build -c release >&2
BIN="$(swift build -c release --show-bin-path)/transport-probe"
WORK="$(mktemp -d /dev/shm/transport-probe.XXXXXX)"
PIDS=()
cleanup() {
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
    rm -rf "$WORK"
}
trap cleanup EXIT

SERVERS=(
    "posix-mem|posix --workers 4"
    "nio-mem|nio"
    "posix-file|posix --workers 4 --file $WORK/export.img"
    "nio-file-pool|nio --pool 4 --file $WORK/export.img"
)
declare -A PID_OF
for entry in "${SERVERS[@]}"; do
    name="${entry%%|*}"
    # shellcheck disable=SC2086  # the argument list is split on purpose
    "$BIN" ${entry#*|} --size $((256 << 20)) --socket "$WORK/$name.sock" >"$WORK/$name.log" 2>&1 &
    PIDS+=("$!")
    PID_OF[$name]=$!
    for _ in $(seq 100); do
        nbdinfo --size "nbd+unix:///?socket=$WORK/$name.sock" >/dev/null 2>&1 && break
        sleep 0.2
    done
done

drive() { # name rw output
    fio --name=count --ioengine=nbd --uri="nbd+unix:///?socket=$WORK/$1.sock" --rw="$2" --bs=4k \
        --iodepth=32 --io_size="$IO_SIZE" --output-format=json --output="$3" >/dev/null
}

echo "| server | workload | syscalls/IO | of which futex | sends/IO | context switches/IO | server CPU µs/IO |"
echo "|---|---|---:|---:|---:|---:|---:|"
for entry in "${SERVERS[@]}"; do
    name="${entry%%|*}"
    pid=${PID_OF[$name]}
    for rw in randread randwrite; do
        perf stat -e context-switches,task-clock -x, -o "$WORK/perf" -p "$pid" &
        tracer=$!
        sleep 0.5
        drive "$name" "$rw" "$WORK/perf.json"
        kill -INT "$tracer"
        wait "$tracer" || true
        strace -f -c -o "$WORK/strace" -p "$pid" 2>/dev/null &
        tracer=$!
        sleep 1
        drive "$name" "$rw" "$WORK/strace.json"
        kill -INT "$tracer"
        wait "$tracer" || true
        python3 - "$name" "$rw" "$WORK" <<'PY'
import json, sys
name, rw, work = sys.argv[1:]
def ios(path):
    job = json.load(open(path))["jobs"][0]
    return job["read"]["total_ios"] + job["write"]["total_ios"]
perf = {}
for line in open(f"{work}/perf"):
    fields = line.strip().split(",")
    if len(fields) > 2 and fields[0][:1].isdigit():
        perf[fields[2]] = float(fields[0])
calls = {}
for line in open(f"{work}/strace"):
    fields = line.split()
    # % time, seconds, usecs/call, calls, [errors], syscall
    if len(fields) >= 5 and fields[0][0].isdigit() and fields[-1] != "total":
        calls[fields[-1]] = int(fields[3])
n = ios(f"{work}/strace.json")
m = ios(f"{work}/perf.json")
sends = calls.get("sendto", 0) + calls.get("writev", 0) + calls.get("sendmsg", 0)
print(f"| {name} | 4k {rw} QD32 | {sum(calls.values()) / n:.2f} | {calls.get('futex', 0) / n:.2f} "
      f"| {sends / n:.3f} | {perf.get('context-switches', 0) / m:.2f} | {perf.get('task-clock', 0) * 1000 / m:.2f} |")
PY
    done
done
