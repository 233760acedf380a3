#!/bin/bash
# Boots the kernel-peer VM (Debian's kernel, busybox, Debian's usbip) under qemu-system-x86_64 and
# waits until its USB/IP servers answer OP_REQ_DEVLIST. Builds the image first if needed.
#
#   start.sh [PORT]          PORT: host port of "usbipd --device" (default 3240)
#
# Environment: MODE=both|device|stub (default both: device mode on PORT, stub mode on STUB_PORT),
#   STUB_PORT (default PORT+1), STUB_CONFIGURE=1 (stub devices start configured), DEBUG=1 (usbipd -d),
#   ACCEL=auto|kvm|tcg, TIMEOUT (s, default 120), KERNEL_PEER_CACHE (default ~/.cache/usbip-kernel-peer).
# Progress goes to stderr as short "start.sh: ..." and "build: ..." lines. Exit status 3: this host
# cannot run the VM (no QEMU, or build.sh cannot build the image); the last stderr line is then
# "...: unavailable: <reason>".
# On success prints exactly one line and leaves QEMU running:
#   READY port=<p> pid=<qemu pid> busids=<a,b,..> [stub_port=<p2> stub_busids=<a,b,..>]
# Files in $KERNEL_PEER_CACHE/run: qemu-PORT.pid, console-PORT.log (guest console, kernel log),
#   shell-PORT.sock (root shell on the guest's ttyS1, see guestcmd.py).
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
CACHE=${KERNEL_PEER_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/usbip-kernel-peer}
RUN=$CACHE/run
PORT=${1:-${PORT:-3240}}
MODE=${MODE:-both}
STUB_PORT=${STUB_PORT:-$((PORT + 1))}
ACCEL=${ACCEL:-auto}
TIMEOUT=${TIMEOUT:-120}
PY=${PYTHON:-python3}
mkdir -p "$RUN"
err() { echo "start.sh: $*" >&2; }
command -v qemu-system-x86_64 >/dev/null || {
  err "unavailable: qemu-system-x86_64 not found (apt-get install qemu-system-x86 busybox-static cpio, or run .ci/kernel-setup.sh)"
  exit 3; }

case "$MODE" in
  both)   FWD="hostfwd=tcp:127.0.0.1:$PORT-:3240,hostfwd=tcp:127.0.0.1:$STUB_PORT-:3241"
          GUESTARGS="usbipvm.mode=both usbipvm.devport=3240 usbipvm.stubport=3241" ;;
  device) FWD="hostfwd=tcp:127.0.0.1:$PORT-:3240"
          GUESTARGS="usbipvm.mode=device usbipvm.devport=3240" ;;
  stub)   FWD="hostfwd=tcp:127.0.0.1:$PORT-:3240"
          GUESTARGS="usbipvm.mode=stub usbipvm.stubport=3240" ;;
  *) err "MODE must be both, device or stub"; exit 2 ;;
esac

PIDFILE=$RUN/qemu-$PORT.pid
LOG=$RUN/console-$PORT.log
SOCK=$RUN/shell-$PORT.sock
if [ -s "$PIDFILE" ] && kill -0 "$(cat "$PIDFILE")" 2>/dev/null; then
  err "a VM for port $PORT is already running (pid $(cat "$PIDFILE")); run stop.sh $PORT first"; exit 1
fi
rm -f "$PIDFILE" "$SOCK" "$LOG"
# every run on a new port leaves its console log for a post-mortem; a week is long enough
find "$RUN" -name 'console-*.log' -mtime +7 -delete 2>/dev/null || true

# ---- build on first use, or when the guest scripts changed ----
IMG=$CACHE/initramfs.cpio.gz
if [ ! -s "$IMG" ] || [ ! -s "$CACHE/vmlinuz" ] || [ "$HERE/guest/init" -nt "$IMG" ] \
   || [ "$HERE/guest/usbipvm-reset" -nt "$IMG" ] || [ "$HERE/build.sh" -nt "$IMG" ]; then
  err "building the VM image in $CACHE (first use, or tools/kernelpeer changed)"
  "$HERE/build.sh" >&2  # its exit status is ours (set -e), so 3 passes through
fi

# ---- accelerator: KVM only when a KVM module is really loaded ----
if [ "$ACCEL" = auto ]; then
  ACCEL=tcg
  if [ -w /dev/kvm ] && { [ -d /sys/module/kvm_intel ] || [ -d /sys/module/kvm_amd ]; }; then ACCEL=kvm; fi
fi
if [ "$ACCEL" = kvm ]; then ACCARGS=(-accel kvm -cpu host); else ACCARGS=(-accel tcg); fi

err "booting the VM (accel $ACCEL, up to $TIMEOUT s)"
T0=$EPOCHREALTIME
# restrict=on: the guest has no route out; hostfwd listens on 127.0.0.1 only.
qemu-system-x86_64 "${ACCARGS[@]}" -m 512M -smp 1 \
  -nodefaults -no-user-config -display none -vga none -no-reboot \
  -kernel "$CACHE/vmlinuz" -initrd "$IMG" \
  -append "console=ttyS0,115200 quiet panic=-1 $GUESTARGS usbipvm.debug=${DEBUG:-0} usbipvm.stubconfig=${STUB_CONFIGURE:-0}" \
  -netdev "user,id=n0,restrict=on,$FWD" -device virtio-net-pci,netdev=n0 \
  -serial "file:$LOG" -serial "unix:$SOCK,server=on,wait=off" \
  -monitor none -daemonize -pidfile "$PIDFILE" >&2 \
  || { err "qemu failed to start (ports $PORT/$STUB_PORT in use?)"; exit 1; }
QPID=$(cat "$PIDFILE")
fail() { err "$*"; err "last console lines:"; tail -20 "$LOG" >&2 || true; kill "$QPID" 2>/dev/null || true; rm -f "$PIDFILE"; exit 1; }

# ---- the guest's /init prints "usbipvm: READY ndev=N nstub=M" when its servers are started ----
END=$((SECONDS + TIMEOUT))
READY=""
while [ -z "$READY" ]; do
  kill -0 "$QPID" 2>/dev/null || fail "qemu exited"
  [ $SECONDS -lt $END ] || fail "timeout waiting for the guest"
  READY=$(grep -ao 'usbipvm: READY ndev=[0-9]* nstub=[0-9]*' "$LOG" 2>/dev/null || true)
  [ -n "$READY" ] || sleep 0.2
done
NDEV=$(echo "$READY" | sed 's/.*ndev=\([0-9]*\).*/\1/')
NSTUB=$(echo "$READY" | sed 's/.*nstub=\([0-9]*\).*/\1/')

# ---- then for each server to answer OP_REQ_DEVLIST with all its devices ----
busids() {  # port count
  local left=$((END - SECONDS)); [ $left -gt 0 ] || left=1
  "$PY" "$HERE/devlist.py" --port "$1" --wait "$2" --timeout "$left" | awk '{print $1}' | paste -sd, -
}
case "$MODE" in
  both)   B1=$(busids "$PORT" "$NDEV") || fail "device mode did not answer"
          B2=$(busids "$STUB_PORT" "$NSTUB") || fail "stub mode did not answer"
          LINE="READY port=$PORT pid=$QPID busids=$B1 stub_port=$STUB_PORT stub_busids=$B2" ;;
  device) B1=$(busids "$PORT" "$NDEV") || fail "device mode did not answer"
          LINE="READY port=$PORT pid=$QPID busids=$B1" ;;
  stub)   B1=$(busids "$PORT" "$NSTUB") || fail "stub mode did not answer"
          LINE="READY port=$PORT pid=$QPID busids=$B1" ;;
esac
awk -v a="$T0" -v b="$EPOCHREALTIME" -v acc="$ACCEL" 'BEGIN {printf "start.sh: booted in %.1f s (accel %s)\n", b - a, acc}' >&2
echo "$LINE"
