#!/bin/bash
# Stops the VM that start.sh [PORT] started (only that QEMU: checked by its command line).
CACHE=${KERNEL_PEER_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/usbip-kernel-peer}
PORT=${1:-${PORT:-3240}}
PIDFILE=$CACHE/run/qemu-$PORT.pid
[ -s "$PIDFILE" ] || { echo "stop.sh: no pid file $PIDFILE" >&2; exit 1; }
PID=$(cat "$PIDFILE")
if ! kill -0 "$PID" 2>/dev/null; then rm -f "$PIDFILE"; echo "stop.sh: pid $PID was not running" >&2; exit 0; fi
if ! tr '\0' ' ' < "/proc/$PID/cmdline" | grep -q -- "$PIDFILE"; then
  echo "stop.sh: pid $PID is not the qemu started for port $PORT; not killing it" >&2; exit 1
fi
kill "$PID"
for _ in $(seq 50); do kill -0 "$PID" 2>/dev/null || break; sleep 0.1; done
kill -0 "$PID" 2>/dev/null && kill -9 "$PID"
rm -f "$PIDFILE" "$CACHE/run/shell-$PORT.sock"
echo "stopped pid $PID"
