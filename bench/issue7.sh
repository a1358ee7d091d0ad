#!/usr/bin/env bash
# bench/issue7.sh - issue 7's measurement: Bulkhead's chain against the peers,
# write amplification, crypt-domain peak memory and how cost grows, as
# markdown tables with the ratios to the goals.
#
#   bench/issue7.sh [--quick] [--no-build] [--parts peers,wa,mem,scale]
#                   [--out PREFIX] [--dir /dev/shm] [--cryptd-args ARGS]
#
#   --quick      smoke run (about 6 min): 1 rep of 2 s per cell, smaller
#                WA volumes, short memory run. Default: full run (about 25 min):
#                5 interleaved reps of 4 s (+1 s ramp) against the peers,
#                3 reps of 5 s for the scaling cells.
#   --no-build   use the existing binaries (also implied by BH_BIN=DIR, the
#                directory holding bulkhead, bulkhead-storaged, bulkhead-cryptd;
#                default .build/release, built with swift build -c release)
#   --parts      which parts to run (default all four)
#   --out PREFIX write PREFIX.md (the tables) and PREFIX.results.txt (raw
#                lines); default bench/chain/results/issue7-quick or -full
#   --dir        where images and pools live (default /dev/shm)
#
# Parts:
#   peers  bench/chain.sh (../shared/bench/peers.sh with the `bulkhead` chain
#          next to D2_qemu_luks_2hop, B_nbdkit_luks, R2_nbdkit; interleaved,
#          1 GiB image): tables A (rate, mean/p99 latency, crypt-domain and
#          whole-server CPU µs per I/O) and B (paired ratios against the goals).
#          cryptd's own CPU is sampled by bench/chain/peer-server.sh
#          (BH_SAMPLE_DIR) and cut to fio's measured window.
#   wa     bench/wa.sh wa, cases r4k_16k (4k random writes, FLUSH every 1000),
#          s1m_end and s1m_f64 (1 MiB sequential writes): table C.
#   mem    bench/wa.sh mem on a 256 GiB sparse volume (4k random writes QD32),
#          plus the VmHWM of every cryptd of the other parts: table D.
#   scale  bench/chain/scale.sh: 1 GiB against 256 GiB sparse volume, 1 against
#          8 volumes served at once, QD1/8/32: tables E, F, G.
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
quick=0; build=1; parts="peers,wa,mem,scale"; out=""; dir=/dev/shm; cargs=""
while [ $# -gt 0 ]; do
  case "$1" in
    --quick) quick=1; shift;;
    --no-build) build=0; shift;;
    --parts) parts=$2; shift 2;;
    --out) out=$2; shift 2;;
    --dir) dir=$2; shift 2;;
    --cryptd-args) cargs=$2; shift 2;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'; exit 0;;
    *) echo "issue7.sh: unknown option $1" >&2; exit 2;;
  esac
done
mode=full; [ "$quick" = 1 ] && mode=quick
[ -n "$out" ] || out="$repo/bench/chain/results/issue7-$mode"
mkdir -p "$(dirname "$out")"

if [ "$build" = 1 ] && [ -z "${BH_BIN:-}" ]; then
  (cd "$repo" && swift build -c release) >&2
fi
export BH_BIN="${BH_BIN:-$repo/.build/release}"
. "$repo/bench/chain/lib.sh"
bh_need_binaries issue7.sh
bh_need issue7.sh fio nbdkit nbdinfo nbdcopy qemu-nbd jq python3
# Peak use of --dir: peers 1+1 GiB images + a 3.3 GiB pool; scale a 10 GiB
# pool (written in full: next-fit allocation); mem what 30 s of random
# writes allocate.
need_gib=12
avail_gib=$(( $(df --output=avail -k "$dir" | tail -1) / 1048576 ))
[ "$avail_gib" -ge "$need_gib" ] || { echo "issue7.sh: $dir has $avail_gib GiB free, needs $need_gib" >&2; exit 1; }

W=$(mktemp -d "${TMPDIR:-/tmp}/bulkhead-issue7.XXXXXX")
CHILD=""
cleanup() {
  # Each part runs in its own process group. TERM its script first: its
  # trap stops its daemons in order (after the running fio, at most a few
  # seconds); whatever of the group is left after 60 s is killed.
  local i
  if [ -n "$CHILD" ]; then
    kill -TERM "$CHILD" 2>/dev/null || true
    for ((i = 0; i < 600; i++)); do kill -0 "$CHILD" 2>/dev/null || break; sleep 0.1; done
    kill -KILL -- "-$CHILD" 2>/dev/null || true
    wait "$CHILD" 2>/dev/null || true
  fi
  rm -rf "$W"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
# run_part CMD...: in its own process group (set -m), so Ctrl-C here stops all of it.
run_part() {
  set -m
  "$@" &
  CHILD=$!
  set +m
  local rc=0
  wait "$CHILD" || rc=$?
  CHILD=""
  return $rc
}

raw="$W/raw.txt"; : > "$raw"
meta() { printf 'I7META %s\n' "$*" >> "$raw"; }
help=$("$BH_BIN/bulkhead-cryptd" --help 2>&1 || true)
ckpt=$(grep -A3 -- '--checkpoint-records' <<<"$help" | grep -o 'default: [0-9_]*' | head -1 | cut -d' ' -f2)
workers=$(grep -A3 -- '--workers' <<<"$help" | grep -o 'default: [0-9_]*' | head -1 | cut -d' ' -f2)
cache_mib=$(grep -A3 -- '--metadata-cache' <<<"$help" | grep -o 'default: [0-9_]*' | head -1 | cut -d' ' -f2)
if [[ $cargs =~ --metadata-cache[=\ ]([0-9]+) ]]; then cache_mib=${BASH_REMATCH[1]}; fi
meta "mode $mode date $(date -Is) commit $(git -C "$repo" rev-parse --short HEAD) bin $BH_BIN cryptd_args '${cargs}'"
meta "host cpus $(nproc) kernel $(uname -r) loadavg $(cut -d' ' -f1-3 /proc/loadavg | tr ' ' ,)"
meta "cache node cache ${cache_mib:-?} MiB of 4 KiB nodes (--metadata-cache), overlay bounded by --checkpoint-records ${ckpt:-?} (about 128 B per record), ${workers:-?} workers per consumer connection (1 MiB stacks), cryptd args '${cargs}'"
t_start=$(date +%s)

has() { [[ ",$parts," == *",$1,"* ]]; }
# A failed part is noted and the others still report.
failed() { meta "part $1 failed"; echo "issue7.sh: part $1 failed; its table is left out" >&2; }

if has peers; then
  mkdir -p "$W/samples"
  if [ "$quick" = 1 ]; then popts=(--quick --runtime 2 --no-baselines); else popts=(--reps 5 --runtime 4 --ramp 1 --base-reps 1); fi
  pc=(); [ -n "$cargs" ] && pc=(--cryptd-args "$cargs")
  BH_SAMPLE_DIR="$W/samples" run_part bash "$repo/bench/chain.sh" --no-build "${pc[@]}" --size 1G --img-dir "$dir" \
    --workdir "$W/peers-work" --outdir "$W/peers" "${popts[@]}" >/dev/null || failed peers
  cat "$W/peers/results.txt" >> "$raw" 2>/dev/null || true
  python3 "$repo/bench/chain/issue7-report.py" crypt "$W/peers" "$W/samples" >> "$raw" || true
fi

if has wa; then
  size=1G; [ "$quick" = 1 ] && size=256M
  # wa.sh: fresh pool per case, exact byte counts from the storage process
  run_part bash "$repo/bench/wa.sh" wa --no-build --size "$size" --cases r4k_16k,s1m_end,s1m_f64 --dir "$dir" --out "$W/wa.txt" >/dev/null || failed wa
  cat "$W/wa.txt" >> "$raw" 2>/dev/null || true
fi

if has mem; then
  rt=30; [ "$quick" = 1 ] && rt=8
  records=default
  if [[ $cargs =~ --checkpoint-records[=\ ]([0-9]+) ]]; then records=${BASH_REMATCH[1]}; fi
  run_part bash "$repo/bench/wa.sh" mem --no-build --vsize 256G --runtime "$rt" --records "$records" --dir "$dir" --out "$W/mem.txt" >/dev/null || failed mem
  cat "$W/mem.txt" >> "$raw" 2>/dev/null || true
fi

if has scale; then
  if [ "$quick" = 1 ]; then sopts=(--reps 1 --runtime 2); else sopts=(--reps 3 --runtime 5); fi
  run_part bash "$repo/bench/chain/scale.sh" "${sopts[@]}" --dir "$dir" --cryptd-args "$cargs" --out "$W/scale.txt" >/dev/null || failed scale
  cat "$W/scale.txt" >> "$raw" 2>/dev/null || true
fi

meta "elapsed_s $(( $(date +%s) - t_start )) loadavg_end $(cut -d' ' -f1-3 /proc/loadavg | tr ' ' ,)"
{
  flag=""; [ "$quick" = 1 ] && flag=" --quick"
  echo "## Issue 7 measurement ($mode): \`bench/issue7.sh$flag\`"
  echo
  python3 "$repo/bench/chain/issue7-report.py" tables "$raw"
} > "$out.md"
cp "$raw" "$out.results.txt"
cat "$out.md"
echo "issue7.sh: tables in $out.md, raw lines in $out.results.txt ($(( $(date +%s) - t_start )) s)" >&2
