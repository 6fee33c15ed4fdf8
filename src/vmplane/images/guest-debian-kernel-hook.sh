#!/bin/sh
# vmplane debian image: keep the bootloader pointing at the newest kernel.
#
# Installed as zz-vmplane-syslinux in /etc/kernel/postinst.d, /etc/kernel/postrm.d and
# /etc/initramfs/post-update.d
# (run after a kernel is installed or removed, and after update-initramfs made an initrd: inside
# dpkg, initramfs-tools defers the initrd to a trigger, so the kernel hook alone may find none
# yet). /boot is a FAT partition that syslinux boots from; this rewrites its syslinux.cfg:
# the newest vmlinuz-* that has an initrd.img-* is the default, the one before it a fallback.
# The kernel command line comes from /etc/default/vmplane-syslinux (KERNEL_CMDLINE=...).
# BOOT_DIR and DEFAULTS_FILE may be set to run it on another tree (the unit test does).
set -eu

BOOT_DIR="${BOOT_DIR:-/boot}"
DEFAULTS_FILE="${DEFAULTS_FILE:-/etc/default/vmplane-syslinux}"
KERNEL_CMDLINE="console=ttyS0"
[ -r "$DEFAULTS_FILE" ] && . "$DEFAULTS_FILE"

versions=$(for k in "$BOOT_DIR"/vmlinuz-*; do
  [ -e "$k" ] || continue
  v=${k##*/vmlinuz-}
  [ -e "$BOOT_DIR/initrd.img-$v" ] && echo "$v"
done | sort -V -r)

newest=$(echo "$versions" | sed -n 1p)
previous=$(echo "$versions" | sed -n 2p)
if [ -z "$newest" ]; then
  echo "zz-vmplane-syslinux: no kernel with an initrd in $BOOT_DIR; syslinux.cfg left as it is" >&2
  exit 0
fi

tmp="$BOOT_DIR/syslinux.cfg.new"
{
  echo "# written by /etc/kernel/postinst.d/zz-vmplane-syslinux: do not edit"
  echo "SERIAL 0 115200"
  echo "TIMEOUT 10"
  echo "DEFAULT linux"
  echo "LABEL linux"
  echo "  KERNEL /vmlinuz-$newest"
  echo "  APPEND initrd=/initrd.img-$newest $KERNEL_CMDLINE"
  if [ -n "$previous" ]; then
    echo "LABEL previous"
    echo "  KERNEL /vmlinuz-$previous"
    echo "  APPEND initrd=/initrd.img-$previous $KERNEL_CMDLINE"
  fi
} >"$tmp"
mv -f "$tmp" "$BOOT_DIR/syslinux.cfg"
echo "zz-vmplane-syslinux: $BOOT_DIR/syslinux.cfg boots $newest"
