#!/usr/bin/env bash
# Host tools for the kernel conformance suite (tests/kernel, tools/kernelpeer): QEMU, a static
# busybox for the guest, cpio for its initramfs. Idempotent: installs only what is missing, then
# builds the VM image once (about 72 MB of kernel and usbip .debs, 81 MB kept in $KERNEL_PEER_CACHE,
# default ~/.cache/usbip-kernel-peer), so the test session only boots it. A host that cannot build
# it (build.sh exit 3: no network, no apt) fails here, before the tests.
set -euo pipefail
cd "$(dirname "$0")/.."
export DEBIAN_FRONTEND=noninteractive
SUDO=""; [ "$(id -u)" = 0 ] || SUDO=sudo

need=()
command -v qemu-system-x86_64 >/dev/null 2>&1 || need+=(qemu-system-x86)
[ -x /bin/busybox ] || need+=(busybox-static)
command -v cpio >/dev/null 2>&1 || need+=(cpio)
if [ ${#need[@]} -gt 0 ]; then
  echo "kernel-setup: apt-get install ${need[*]}"
  $SUDO apt-get -o DPkg::Lock::Timeout=300 update -qq
  $SUDO apt-get -o DPkg::Lock::Timeout=300 install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

CACHE=${KERNEL_PEER_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/usbip-kernel-peer}
if [ ! -s "$CACHE/initramfs.cpio.gz" ] || [ ! -s "$CACHE/vmlinuz" ]; then
  echo "kernel-setup: building the kernel-peer VM image in $CACHE"
  tools/kernelpeer/build.sh
fi
echo "kernel-setup: ready ($(qemu-system-x86_64 --version | head -1))"
