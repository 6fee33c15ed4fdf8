#!/usr/bin/env bash
# Install the host tools `vmplane image build debian-12` needs (src/vmplane/images/debian.py).
# Idempotent: does nothing (and skips apt-get entirely) when every tool is present.
#
#   mmdebstrap       <- mmdebstrap        (the guest's root tree, from Debian's packages)
#   sfdisk           <- fdisk             (the partition table, on a plain file)
#   mke2fs           <- e2fsprogs         (the ext4 root, filled from a directory with -d: no mount)
#   mkfs.fat, mcopy  <- dosfstools, mtools (the FAT /boot partition, written without mounting)
#   syslinux         <- syslinux, syslinux-common (boot code: installed on the FAT image file)
#   qemu-img         <- qemu-utils        (the compressed qcow2)
set -euo pipefail

declare -A tool_pkg=(
  [mmdebstrap]=mmdebstrap
  [sfdisk]=fdisk
  [mke2fs]=e2fsprogs
  [mkfs.fat]=dosfstools
  [mcopy]=mtools
  [syslinux]=syslinux
  [qemu-img]=qemu-utils
)

export PATH="$PATH:/usr/local/sbin:/usr/sbin:/sbin"

missing=()
for tool in "${!tool_pkg[@]}"; do
  command -v "$tool" >/dev/null 2>&1 || missing+=("${tool_pkg[$tool]}")
done
# the MBR boot code syslinux-common ships
[ -f /usr/lib/syslinux/mbr/mbr.bin ] || missing+=(syslinux-common)

if [ "${#missing[@]}" -eq 0 ]; then
  echo "install-image-tools: all tools present ($(mmdebstrap --version 2>/dev/null | head -n1))"
  exit 0
fi

. "$(dirname "$0")/as-root.sh"

export DEBIAN_FRONTEND=noninteractive
as_root "install: ${missing[*]}" apt-get update
echo "install-image-tools: installing ${missing[*]}"
as_root "install: ${missing[*]}" apt-get install -y --no-install-recommends "${missing[@]}"

for tool in "${!tool_pkg[@]}"; do
  command -v "$tool" >/dev/null 2>&1 || { echo "install-image-tools: $tool still missing" >&2; exit 1; }
done
echo "install-image-tools: done ($(mmdebstrap --version 2>/dev/null | head -n1))"
