#!/usr/bin/env bash
# Install the host tools vmplane needs to build and run tiny QEMU guests.
# Idempotent: does nothing (and skips apt-get entirely) when every tool is present.
#
#   qemu-system-x86_64  <- qemu-system-x86
#   qemu-img            <- qemu-utils
#   mkfs.ext4           <- e2fsprogs   (formats the tiny image's base disk)
#   dpkg-deb, apt-get   <- dpkg, apt   (always present on Debian; fetch/unpack guest packages)
#   gzip                <- gzip
#   ip, dnsmasq, nft    <- iproute2, dnsmasq-base, nftables   (bridge networks and firewalls)
#   ssh, ssh-keygen     <- openssh-client   (`vmplane vm ssh`, and the tests that log in to guests)
#   OVMF_CODE_4M.fd     <- ovmf             (the UEFI firmware of `firmware: uefi` VMs)
#   grub-mkrescue       <- grub-common, grub-pc-bin, grub-efi-amd64-bin, xorriso, mtools
#                          (the tests build an ISO that boots on BIOS and UEFI)
# As root it also makes the system user vmplane-qemu, which QEMU and qemu-img run as.
set -euo pipefail

declare -A tool_pkg=(
  [qemu-system-x86_64]=qemu-system-x86
  [qemu-img]=qemu-utils
  [mkfs.ext4]=e2fsprogs
  [dpkg-deb]=dpkg
  [gzip]=gzip
  # the tests build a BIOS-bootable disk image to import as a template
  [syslinux]=syslinux
  [mcopy]=mtools
  [mkfs.fat]=dosfstools
  # backups go to a restic repository (content-addressed, de-duplicated, verified)
  [restic]=restic
  # bridge networks: bridges and taps, DHCP per bridge, VM firewalls
  [ip]=iproute2
  [dnsmasq]=dnsmasq-base
  [nft]=nftables
  # `vmplane vm ssh` runs the system ssh; the CLI test makes its key with ssh-keygen
  [ssh]=openssh-client
  [ssh-keygen]=openssh-client
  # the ISO tests: grub-mkrescue builds a BIOS + UEFI bootable ISO with xorriso
  [grub-mkrescue]=grub-common
  [xorriso]=xorriso
)
# files, not commands: the UEFI firmware, and GRUB's BIOS and UEFI platforms grub-mkrescue packs
declare -A file_pkg=(
  [/usr/share/OVMF/OVMF_CODE_4M.fd]=ovmf
  [/usr/share/OVMF/OVMF_VARS_4M.fd]=ovmf
  [/usr/lib/grub/i386-pc/cdboot.img]=grub-pc-bin
  [/usr/lib/grub/x86_64-efi/linux.mod]=grub-efi-amd64-bin
)

# mkfs.ext4 lives in /sbin, which may be missing from a non-root PATH.
export PATH="$PATH:/usr/local/sbin:/usr/sbin:/sbin"

# QEMU and qemu-img run as this unprivileged system user when vmplane runs as root (docs/security.md,
# "Files and processes on the host"). Made when this script runs as root; idempotent.
QEMU_USER=vmplane-qemu
if [ "$(id -u)" -eq 0 ] && ! getent passwd "$QEMU_USER" >/dev/null; then
  useradd --system --no-create-home --shell /usr/sbin/nologin "$QEMU_USER"
  echo "install-qemu: made the system user $QEMU_USER (QEMU and qemu-img run as it)"
fi

missing=()
for tool in "${!tool_pkg[@]}"; do
  if ! command -v "$tool" >/dev/null 2>&1; then
    missing+=("${tool_pkg[$tool]}")
  fi
done
for file in "${!file_pkg[@]}"; do
  [ -f "$file" ] || missing+=("${file_pkg[$file]}")
done

# The tiny guest image is built from packages `apt-get download` fetches: it needs package lists.
lists_ok() { apt-cache show linux-image-cloud-amd64 >/dev/null 2>&1; }

if [ "${#missing[@]}" -eq 0 ] && lists_ok; then
  echo "install-qemu: all tools present ($(qemu-system-x86_64 --version | head -n1))"
  exit 0
fi

. "$(dirname "$0")/as-root.sh"

export DEBIAN_FRONTEND=noninteractive
as_root "install: ${missing[*]:-package lists}" apt-get update
if [ "${#missing[@]}" -gt 0 ]; then
  echo "install-qemu: installing ${missing[*]} (+ the base set)"
  as_root "install: ${missing[*]:-package lists}" apt-get install -y --no-install-recommends \
    qemu-system-x86 qemu-utils e2fsprogs syslinux syslinux-common mtools dosfstools restic \
    nftables dnsmasq-base iproute2 openssh-client "${missing[@]}"
fi

for tool in "${!tool_pkg[@]}"; do
  command -v "$tool" >/dev/null 2>&1 || { echo "install-qemu: $tool still missing" >&2; exit 1; }
done
for file in "${!file_pkg[@]}"; do
  [ -f "$file" ] || { echo "install-qemu: $file still missing" >&2; exit 1; }
done
echo "install-qemu: done ($(qemu-system-x86_64 --version | head -n1))"
