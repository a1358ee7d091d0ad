#!/usr/bin/env bash
# bench/chain/peer-server.sh - the `bulkhead` server for ../shared/bench/peers.sh.
#
# Run by peers.sh as `setsid bash -c 'exec bash .../peer-server.sh'`, with
# SOCK, SOCK1, RAW_IMG, SIZE_BYTES and RUNDIR set by peers.sh and BH_BIN,
# BH_POOL_DIR, BH_POOL_PCT, BH_POOL_EXTRA_MIB (and optionally BH_CRYPTD_ARGS,
# BH_SAMPLE_DIR; BH_STORAGED_ARGS from the environment, e.g. --inline)
# set by bench/chain.sh.
#
# The chain: fio -> $SOCK -> bulkhead-cryptd -> $SOCK1 -> bulkhead-storaged -> pool image.
# Both daemons stay in peers.sh's process group (storaged in the background,
# cryptd in the foreground via exec), so peers.sh counts the CPU of both and
# kills both.
#
# First start (no $RUNDIR/ready): make a fresh pool image, format it, create
# one volume of exactly SIZE_BYTES named after $SOCK's basename, then fill it
# with RAW_IMG's plaintext through a private cryptd and stop that cryptd
# cleanly (a committed, checkpointed, fully mapped volume, like the
# pre-filled images of the built-in servers). Later starts reuse the pool.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
. "$here/lib.sh"

vol=$(basename "$SOCK" .sock)
serve_dir=$(dirname "$SOCK")
pool_dir=${BH_POOL_DIR:-$RUNDIR}
img="$pool_dir/pool-$(basename "$RUNDIR").img"
key="$RUNDIR/key"
state="$RUNDIR/state"
storage="nbd:unix:$SOCK1"

if [ ! -e "$RUNDIR/ready" ]; then
  # Written whole up front, as the peers' images are (bh_pool_image).
  bh_pool_image "$img" "$(bh_pool_bytes "$SIZE_BYTES" "${BH_POOL_PCT:-300}" "${BH_POOL_EXTRA_MIB:-256}")"
  bh_keyfile "$key"
  mkdir -p "$state"
fi

# shellcheck disable=SC2086
"$BH_BIN/bulkhead-storaged" --listen "unix:$SOCK1" --export "pool=$img" --log-level warning ${BH_STORAGED_ARGS:-} &
bh_wait_nbd "nbd+unix:///?socket=$SOCK1" 30

if [ ! -e "$RUNDIR/ready" ]; then
  t0=$(date +%s%N)
  bh_format "$storage" "$key" "$state"
  bh_create "$storage" "$key" "$state" "$vol" "$SIZE_BYTES"
  mkdir -p "$RUNDIR/pre"
  "$BH_BIN/bulkhead-cryptd" --storage "$storage" --key-file "$key" --state-dir "$state" \
    --serve-dir "$RUNDIR/pre" --volume "$vol" --log-level warning &
  pre=$!
  bh_wait_nbd "nbd+unix:///?socket=$RUNDIR/pre/$vol.sock" 60
  nbdcopy --flush "$RAW_IMG" "nbd+unix:///?socket=$RUNDIR/pre/$vol.sock"
  kill -TERM "$pre"
  wait "$pre"
  touch "$RUNDIR/ready"
  echo "peer-server: formatted, created $vol ($SIZE_BYTES bytes) and filled it in $(( ($(date +%s%N) - t0) / 1000000 )) ms" >&2
fi

# A short retry window: peers.sh stops the whole group at once, so storaged
# may be gone before cryptd's final commit; that commit is then abandoned
# (the pool reopens at the last flushed commit, which is what a crash does).
# With BH_SAMPLE_DIR set (bench/issue7.sh), cryptd runs as a child and
# bh_sample logs its own CPU ticks and VmHWM to BH_SAMPLE_DIR/cryptd-TIME.log
# (the crypt domain alone; peers.sh measures the whole process group).
if [ -n "${BH_SAMPLE_DIR:-}" ]; then
  # shellcheck disable=SC2086
  "$BH_BIN/bulkhead-cryptd" --storage "$storage" --key-file "$key" --state-dir "$state" \
    --serve-dir "$serve_dir" --volume "$vol" --retry-window 1 --log-level warning ${BH_CRYPTD_ARGS:-} &
  cpid=$!
  bh_sample "$cpid" "$BH_SAMPLE_DIR/cryptd-$EPOCHREALTIME.log" &
  wait "$cpid"
  exit
fi
# shellcheck disable=SC2086
exec "$BH_BIN/bulkhead-cryptd" --storage "$storage" --key-file "$key" --state-dir "$state" \
  --serve-dir "$serve_dir" --volume "$vol" --retry-window 1 --log-level warning ${BH_CRYPTD_ARGS:-}
