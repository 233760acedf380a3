#!/bin/bash
# Builds $CACHE/vmlinuz and $CACHE/initramfs.cpio.gz for the kernel-peer VM from Debian packages:
# the kernel linux-image-amd64 points at, usbip (+ its libraries) and the host's busybox-static.
# Downloads go to $CACHE/debs (apt-get download, once). Host tools: .ci/kernel-setup.sh.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
CACHE=${KERNEL_PEER_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/usbip-kernel-peer}
log() { echo "build: $*" >&2; }

for tool in qemu-system-x86_64 cpio /bin/busybox; do
  command -v "$tool" >/dev/null || {
    log "$tool missing: apt-get install qemu-system-x86 busybox-static cpio (or run .ci/kernel-setup.sh)"; exit 3; }
done

# the kernel Debian's linux-image-amd64 points at today (override with KPKG=...)
kpkg() { apt-cache depends linux-image-amd64 2>/dev/null | awk '/Depends: linux-image-[0-9]/ {print $2; exit}'; }
KPKG=${KPKG:-$(kpkg)}
if [ -z "$KPKG" ]; then apt-get update -qq >&2; KPKG=$(kpkg); fi

# ---- packages ----
mkdir -p "$CACHE/debs"
cd "$CACHE/debs"
for p in "$KPKG" usbip libudev1 libwrap0; do
  ls "${p}"_*.deb >/dev/null 2>&1 || { log "apt-get download $p"; apt-get download "$p" >&2; }
done
ROOT=$CACHE/root
if [ ! -e "$ROOT/.extracted" ]; then
  rm -rf "$ROOT"; mkdir -p "$ROOT"
  for d in "$CACHE"/debs/*.deb; do dpkg-deb -x "$d" "$ROOT"; done
  touch "$ROOT/.extracted"
fi
KVER=$(ls "$ROOT/lib/modules" | head -1)
MODDIR=$ROOT/lib/modules/$KVER
[ -s "$MODDIR/modules.dep" ] || { log "depmod $KVER"; /bin/busybox depmod -b "$ROOT" "$KVER"; }
cp -f "$ROOT/boot/vmlinuz-$KVER" "$CACHE/vmlinuz"

# ---- initramfs tree: busybox, /init, usbip userspace, modules ----
IR=$CACHE/initramfs
rm -rf "$IR"; mkdir -p "$IR"/{bin,sbin,etc,proc,sys,dev,tmp,run,usr/bin,usr/sbin,lib/x86_64-linux-gnu,lib64,lib/modules/$KVER}
cp /bin/busybox "$IR/bin/busybox"
for a in $(/bin/busybox --list); do [ "$a" = busybox ] || ln -sf busybox "$IR/bin/$a"; done
for a in modprobe insmod rmmod lsmod depmod; do ln -sf ../bin/busybox "$IR/sbin/$a"; done
install -m 0755 "$HERE/guest/init" "$IR/init"
install -m 0755 "$HERE/guest/usbipvm-reset" "$IR/bin/usbipvm-reset"

cp "$ROOT/usr/sbin/usbip" "$ROOT/usr/sbin/usbipd" "$IR/usr/sbin/"
export LD_LIBRARY_PATH=$ROOT/usr/lib/x86_64-linux-gnu
for lib in $(ldd "$IR/usr/sbin/usbipd" "$IR/usr/sbin/usbip" | awk '/=>/ {print $3} /ld-linux/ {print $1}' | sort -u); do
  [ -e "$lib" ] || { log "missing library $lib"; exit 1; }
  case "$lib" in
    */ld-linux-x86-64.so.2) cp -L "$lib" "$IR/lib64/ld-linux-x86-64.so.2" ;;
    *) cp -L "$lib" "$IR/lib/x86_64-linux-gnu/" ;;
  esac
done
if ldd "$IR/usr/sbin/usbipd" | grep -q 'not found'; then log "unresolved libraries"; ldd "$IR/usr/sbin/usbipd" >&2; exit 1; fi
unset LD_LIBRARY_PATH

# HID boot keyboard report descriptor (Documentation/usb/gadget_hid.rst)
printf '\x05\x01\x09\x06\xa1\x01\x05\x07\x19\xe0\x29\xe7\x15\x00\x25\x01\x75\x01\x95\x08\x81\x02\x95\x01\x75\x08\x81\x03\x95\x05\x75\x01\x05\x08\x19\x01\x29\x05\x91\x02\x95\x01\x75\x03\x91\x03\x95\x06\x75\x08\x15\x00\x25\x65\x05\x07\x19\x00\x29\x65\x81\x00\xc0' > "$IR/etc/hid_keyboard.desc"
echo "root:x:0:0:root:/root:/bin/sh" > "$IR/etc/passwd"
echo "root:x:0:" > "$IR/etc/group"

# the wanted modules plus everything they depend on (modules.dep)
WANT="virtio_pci virtio_net configfs libcomposite usb_f_ss_lb usb_f_acm usb_f_mass_storage usb_f_hid usbip-core usbip-vudc usbip-host dummy_hcd"
declare -A seen=()
for m in $WANT; do
  line=$(grep -E "/${m}\.ko:" "$MODDIR/modules.dep") || { log "module $m not in modules.dep"; exit 1; }
  for f in ${line/:/}; do
    [ -n "${seen[$f]:-}" ] && continue; seen[$f]=1
    mkdir -p "$IR/lib/modules/$KVER/$(dirname "$f")"
    cp "$MODDIR/$f" "$IR/lib/modules/$KVER/$f"
  done
done
cp "$MODDIR/modules.builtin" "$MODDIR/modules.order" "$IR/lib/modules/$KVER/"
/bin/busybox depmod -b "$IR" "$KVER"

( cd "$IR" && find . -print0 | sort -z | cpio --null -o -H newc --quiet ) | gzip -1 > "$CACHE/initramfs.cpio.gz.tmp"
mv "$CACHE/initramfs.cpio.gz.tmp" "$CACHE/initramfs.cpio.gz"
log "initramfs $(du -h "$CACHE/initramfs.cpio.gz" | cut -f1), kernel $KVER, ${#seen[@]} modules"
