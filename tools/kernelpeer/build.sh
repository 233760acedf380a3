#!/bin/bash
# Builds $CACHE/vmlinuz and $CACHE/initramfs.cpio.gz for the kernel-peer VM from Debian packages:
# the kernel linux-image-amd64 points at, usbip (+ its libraries) and the host's busybox-static.
# The .debs (about 72 MB) are fetched once with apt-get download into $CACHE/debs and kept, so a
# rebuild needs no network; they are unpacked into a scratch directory that is removed at the end.
# Host tools: .ci/kernel-setup.sh.
#
# Exit status 3 means this host cannot build the image (a tool is missing, apt knows no kernel
# package, the download failed); the last line on stderr is then "build: unavailable: <reason>".
# Callers (tests/kernel) skip on it rather than fail. Other non-zero statuses are bugs.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
CACHE=${KERNEL_PEER_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/usbip-kernel-peer}
log() { echo "build: $*" >&2; }
commas() { local s; s=$(printf '%s, ' "$@"); echo "${s%, }"; }
unavailable() { log "unavailable: $*"; exit 3; }
T0=$SECONDS

# ---- host tools: all checked at once, so one message names everything to install ----
missing=(); pkgs=()
for t in cpio:cpio gzip:gzip ldd:libc-bin; do
  command -v "${t%%:*}" >/dev/null || { missing+=("${t%%:*}"); pkgs+=("${t#*:}"); }
done
[ -x /bin/busybox ] || { missing+=(/bin/busybox); pkgs+=(busybox-static); }
nodeb=()
for t in apt-get apt-cache dpkg-deb; do command -v "$t" >/dev/null || nodeb+=("$t"); done
if [ ${#nodeb[@]} -gt 0 ]; then
  unavailable "$(commas "${nodeb[@]}") not found: the VM image is built from Debian packages, so it needs a" \
    "Debian host with apt and dpkg (or a vmlinuz and initramfs.cpio.gz built elsewhere, copied into $CACHE)"
fi
[ ${#missing[@]} -eq 0 ] || unavailable "$(commas "${missing[@]}") not found (apt-get install ${pkgs[*]})"

# ---- which kernel: the one Debian's linux-image-amd64 points at today (override with KPKG=...) ----
kpkg() { apt-cache depends linux-image-amd64 2>/dev/null | awk '/Depends: linux-image-[0-9]/ {print $2; exit}'; }
KPKG=${KPKG:-$(kpkg)}
if [ -z "$KPKG" ] && [ "$(id -u)" = 0 ]; then
  log "apt-get update (apt's lists know no linux-image-amd64)"
  apt-get update -qq >&2 || unavailable "apt-get update failed (no network or no Debian mirror reachable?)"
  KPKG=$(kpkg)
fi
if [ -z "$KPKG" ]; then  # offline with no lists: a kernel downloaded earlier will do
  KPKG=$(cd "$CACHE/debs" 2>/dev/null && ls linux-image-[0-9]*.deb 2>/dev/null | tail -1 | cut -d_ -f1 || true)
fi
[ -n "$KPKG" ] || unavailable "apt knows no linux-image-amd64 (run apt-get update as root; the image is built from Debian packages)"
DEBS=("$KPKG" usbip libudev1 libwrap0)

# ---- packages: downloaded once into $CACHE/debs ----
mkdir -p "$CACHE/debs"
# one build at a time per cache: two test sessions starting together share the download
if command -v flock >/dev/null; then exec 9>"$CACHE/.build.lock"; flock 9; fi
cd "$CACHE/debs"
want=()
for p in "${DEBS[@]}"; do ls "${p}"_*.deb >/dev/null 2>&1 || want+=("$p"); done
if [ ${#want[@]} -gt 0 ]; then
  # --print-uris reads apt's lists only: "'url' file size hash" per package
  bytes=$(apt-get download --print-uris "${want[@]}" 2>/dev/null | awk '{s += $3} END {print s + 0}' || true)
  log "downloading ${want[*]} ($((bytes / 1000000)) MB) into $CACHE/debs"
  rm -rf .partial; mkdir .partial
  # into .partial first, so an interrupted download never looks like a cached package
  if ! (cd .partial && apt-get download -q "${want[@]}" > ../download.log 2>&1); then
    why=$(grep -E '^(E|Err):' download.log | tail -1 | tr -s " " | cut -c1-200)
    rm -rf .partial
    unavailable "apt-get download ${want[*]} failed (no network or no Debian mirror reachable?): ${why:-see $CACHE/debs/download.log}"
  fi
  case " ${want[*]} " in *" $KPKG "*) rm -f linux-image-[0-9]*.deb ;; esac  # a kernel replaced by a newer one
  mv .partial/*.deb .; rm -rf .partial
  log "downloaded in $((SECONDS - T0)) s"
fi

# ---- unpack into scratch space: about 400 MB, none of it kept ----
# no unpacked tree stays in the cache: remove any that a killed build (or the layout that kept
# them in root/ and initramfs/) left behind
rm -rf "$CACHE/root" "$CACHE/initramfs" "$CACHE"/build.??????
WORK=$(mktemp -d "$CACHE/build.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
ROOT=$WORK/root
log "unpacking the packages and building the initramfs"
mkdir -p "$ROOT"
for p in "${DEBS[@]}"; do dpkg-deb -x "$(ls "$CACHE/debs/${p}"_*.deb | tail -1)" "$ROOT"; done
KVER=$(ls "$ROOT/lib/modules" | head -1)
MODDIR=$ROOT/lib/modules/$KVER
[ -s "$MODDIR/modules.dep" ] || /bin/busybox depmod -b "$ROOT" "$KVER"
cp -f "$ROOT/boot/vmlinuz-$KVER" "$CACHE/vmlinuz.tmp"

# ---- initramfs tree: busybox, /init, usbip userspace, modules ----
IR=$WORK/initramfs
mkdir -p "$IR"/{bin,sbin,etc,proc,sys,dev,tmp,run,usr/bin,usr/sbin,lib/x86_64-linux-gnu,lib64,lib/modules/$KVER}
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
mv "$CACHE/vmlinuz.tmp" "$CACHE/vmlinuz"
mv "$CACHE/initramfs.cpio.gz.tmp" "$CACHE/initramfs.cpio.gz"
rm -rf "$WORK"
log "built in $((SECONDS - T0)) s: kernel $KVER, ${#seen[@]} modules, initramfs $(du -h "$CACHE/initramfs.cpio.gz" | cut -f1); $CACHE holds $(du -sh "$CACHE" | cut -f1)"
