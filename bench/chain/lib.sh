# bench/chain/lib.sh - shared helpers for the Bulkhead chain benchmarks.
# Sourced by bench/issue7.sh, bench/chain.sh, bench/wa.sh and the scripts in
# bench/chain. Needs BH_BIN (directory with the release binaries).

: "${BH_BIN:?BH_BIN must name the directory holding bulkhead, bulkhead-storaged and bulkhead-cryptd}"
BH_PASSPHRASE=${BH_PASSPHRASE:-bulkhead-chain-bench-passphrase}
BH_SCRYPT_LOG2N=${BH_SCRYPT_LOG2N:-12}

bh_log() { printf '[%(%H:%M:%S)T] %s\n' -1 "$*" >&2; }

# bh_need SCRIPT TOOL...: exits naming the first TOOL not on PATH.
bh_need() {
  local who=$1 t
  shift
  for t in "$@"; do command -v "$t" >/dev/null || { echo "$who: missing $t" >&2; exit 1; }; done
}

# bh_need_binaries SCRIPT: exits unless BH_BIN holds the three executables.
bh_need_binaries() {
  local b
  for b in bulkhead bulkhead-storaged bulkhead-cryptd; do
    [ -x "$BH_BIN/$b" ] || { echo "$1: missing $BH_BIN/$b (swift build -c release, or BH_BIN=DIR)" >&2; exit 1; }
  done
}

# bh_stop_all PID...: stops child processes last started first, each gone
# before the next is told: cryptd's final commit needs its storaged.
bh_stop_all() {
  local pids=("$@") i
  for ((i = ${#pids[@]} - 1; i >= 0; i--)); do
    kill -TERM "${pids[$i]}" 2>/dev/null || true
    wait "${pids[$i]}" 2>/dev/null || true
  done
}

# bh_wait_nbd URI [seconds [PID]]: wait until an NBD server answers on URI
# (gives up early if process PID has exited).
bh_wait_nbd() {
  local uri=$1 limit=${2:-60} pid=${3:-} i
  for ((i = 0; i < limit * 20; i++)); do
    nbdinfo --size "$uri" >/dev/null 2>&1 && return 0
    if [ -n "$pid" ] && ! kill -0 "$pid" 2>/dev/null; then bh_log "server pid $pid exited before answering on $uri"; return 1; fi
    sleep 0.05
  done
  bh_log "no NBD server answered on $uri within ${limit}s"
  return 1
}

# bh_wait_gone PID [seconds]: wait until process PID has exited (not a child: polls /proc).
bh_wait_gone() {
  local pid=$1 limit=${2:-30} i
  for ((i = 0; i < limit * 20; i++)); do
    [ -e "/proc/$pid" ] || return 0
    grep -q '^State:.*Z' "/proc/$pid/status" 2>/dev/null && return 0
    sleep 0.05
  done
  return 1
}

# bh_pool_bytes VOLUME_BYTES FACTOR_PERCENT EXTRA_MIB: pool image size, a multiple of 4096.
bh_pool_bytes() {
  local v=$1 pct=$2 extra=$3
  echo $(( (v / 100 * pct + extra * 1048576) / 4096 * 4096 ))
}

# bh_pool_image FILE BYTES: a pool image of BYTES, every page of it written
# (zeros), as the peers' images are before they are measured (peers.sh's fio
# writes them whole). Neither a sparse file nor fallocate(1) does that on
# this VM's tmpfs: the first write into a page never written costs the
# storage domain a page fault the hypervisor serves (the guest reports free
# pages to the host, page_reporting), which no disk partition costs. With a
# fallocated 3.25 GiB pool, the first 1 MiB sequential writes into its
# never-written part cost storaged 2605 µs per MiB, against 227 once written
# (session 19, bench/CHAIN.md).
bh_pool_image() {
  rm -f "$1"
  head -c "$2" /dev/zero > "$1"
}

# bh_keyfile FILE: writes the benchmark passphrase (mode 0600).
bh_keyfile() { ( umask 077; printf '%s' "$BH_PASSPHRASE" > "$1" ); }

# bh_format STORAGE KEY STATE: formats a pool (fast scrypt; benchmarks only).
bh_format() {
  "$BH_BIN/bulkhead" format "$1" --key-file "$2" --scrypt-log2n "$BH_SCRYPT_LOG2N" --state-dir "$3" \
    --recovery-key-out "$3/recovery.key" >/dev/null
}

# bh_create STORAGE KEY STATE NAME BYTES
bh_create() {
  "$BH_BIN/bulkhead" volume create "$1" "$4" --size "$5" --key-file "$2" --state-dir "$3" >/dev/null
}

# bh_vmhwm PID: peak RSS in KiB, bh_vmrss PID: current RSS in KiB.
bh_vmhwm() { awk '/^VmHWM:/{print $2}' "/proc/$1/status" 2>/dev/null; }
bh_vmrss() { awk '/^VmRSS:/{print $2}' "/proc/$1/status" 2>/dev/null; }

# bh_ticks PID: CPU time (utime + stime, clock ticks, all threads) of process PID.
bh_ticks() {
  local line rest
  { read -r line < "/proc/$1/stat"; } 2>/dev/null || { echo 0; return; }
  rest=${line##*) }
  # shellcheck disable=SC2086
  set -- $rest
  echo $(( ${12} + ${13} ))
}

# bh_sample PID FILE [INTERVAL]: until process PID exits, append
# "EPOCHREALTIME CPU_TICKS VMHWM_KIB" for it to FILE every INTERVAL seconds
# (default 0.05). Shell builtins only (no process per sample), so it adds
# next to nothing to the CPU of the process group it runs in.
bh_sample() {
  local pid=$1 file=$2 iv=${3:-0.05} line rest hwm k v fd
  exec {fd}<> <(:)
  while [ -e "/proc/$pid" ]; do
    { read -r line < "/proc/$pid/stat"; } 2>/dev/null || break
    rest=${line##*) }
    # shellcheck disable=SC2086
    set -- $rest
    hwm=0
    while read -r k v _; do
      if [ "$k" = VmHWM: ]; then hwm=$v; break; fi
    done < "/proc/$pid/status" 2>/dev/null || true
    printf '%s %d %s\n' "$EPOCHREALTIME" $(( ${12} + ${13} )) "$hwm" >> "$file"
    read -r -t "$iv" -u "$fd" _ || true
  done
}
