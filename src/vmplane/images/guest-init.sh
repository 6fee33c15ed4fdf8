#!/bin/sh
# vmplane tiny guest: /init (PID 1) of the busybox initramfs.
# Built by vmplane.images.tiny. Everything here is busybox ash + applets.
#
# Serial markers (matched by the host):
#   "vmplane-tiny: init starting"  - first thing init prints
#   "vmplane-tiny: boot complete"  - modules, seed, agent, network, sshd, user-data done
#                                    (and `cloud-init status` says done from then on)
export PATH=/usr/sbin:/usr/bin:/sbin:/bin
export HOME=/root
umask 022

mount -t devtmpfs -o mode=0755,nosuid devtmpfs /dev 2>/dev/null
exec </dev/console >/dev/console 2>&1

say() { echo "vmplane-tiny: $*"; }
say "init starting"

mount -t proc -o nosuid,nodev,noexec proc /proc
mount -t sysfs -o nosuid,nodev,noexec sysfs /sys
mkdir -p /dev/pts /dev/shm
mount -t devpts -o gid=5,mode=0620,ptmxmode=0666 devpts /dev/pts
mount -t tmpfs -o mode=1777,nosuid,nodev tmpfs /dev/shm
mount -t tmpfs -o mode=0755,nosuid,nodev tmpfs /run
ln -sf /proc/self/fd /dev/fd
ln -sf /proc/self/fd/0 /dev/stdin
ln -sf /proc/self/fd/1 /dev/stdout
ln -sf /proc/self/fd/2 /dev/stderr
mkdir -p /run/vmplane /run/qemu-ga /var/log /tmp /mnt/disk /mnt/seed
chmod 1777 /tmp

# --- `cloud-init status` as cloud-init answers it: vmplane asks it through the agent to tell
# when the guest is ready (docs/images.md, "Readiness"): done once the boot below is complete
# (seed, network, sshd, user-data), running until then ---
cat >/usr/bin/cloud-init <<'END'
#!/bin/sh
[ "$1" = status ] || { echo "vmplane-tiny: this guest's cloud-init only answers 'cloud-init status'" >&2; exit 1; }
if [ -e /run/cloud-init/result.json ]; then echo "status: done"; else echo "status: running"; fi
END
chmod 755 /usr/bin/cloud-init

# --- kernel modules, in dependency order (computed at image build time) ---
while read -r m; do
    [ -n "$m" ] || continue
    insmod "/lib/modules/$m" || say "warning: insmod $m failed"
done </etc/vmplane/modules

hostname "$(cat /etc/hostname)"
ip link set lo up

# --- power button (QMP system_powerdown) -> /etc/acpi/PWRF/00000080 ---
# busybox acpid only reacts in foreground mode (-d); its daemon mode ignores events.
acpid -d -c /etc/acpi >/var/log/acpid.log 2>&1 &

# --- qemu-guest-agent on virtio-serial port org.qemu.guest_agent.0 ---
# No udev: link /dev/virtio-ports/<name> -> /dev/vportNpM ourselves. Ports are
# announced asynchronously, so a supervisor waits for the port and restarts the agent.
virtio_port_links() {
    for p in /sys/class/virtio-ports/*; do
        [ -r "$p/name" ] || continue
        name=$(cat "$p/name")
        [ -n "$name" ] || continue
        mkdir -p /dev/virtio-ports
        ln -sfn "../${p##*/}" "/dev/virtio-ports/$name"
    done
}
(
    ga=/dev/virtio-ports/org.qemu.guest_agent.0
    while :; do
        virtio_port_links
        if [ -e "$ga" ]; then
            qemu-ga -m virtio-serial -p "$ga" -t /run/qemu-ga -f /run/qemu-ga.pid \
                -l /var/log/qemu-ga.log
            sleep 1
        else
            sleep 0.2
        fi
    done
) </dev/null >/dev/null 2>&1 &

# --- persistent disk: first /dev/vd* holding ext2/3/4 (the tiny base disk is ext4) ---
DISK=
for d in /dev/vd[a-z]; do
    [ -b "$d" ] || continue
    [ "$(cat "/sys/class/block/${d##*/}/ro" 2>/dev/null)" = 1 ] && continue
    if mount -t ext4 -o noatime,noinit_itable "$d" /mnt/disk 2>/dev/null; then
        DISK=$d
        break
    fi
done
if [ -n "$DISK" ]; then
    mkdir -p /mnt/disk/.vmplane/instances
    say "persistent disk $DISK mounted on /mnt/disk"
else
    say "no ext4 disk found: user-data scripts will run on every boot"
fi

# --- NoCloud seed (label cidata, ISO9660 with Rock Ridge/Joliet, or vfat) ---
norm() { echo "$1" | tr 'A-Z' 'a-z' | sed -e 's/;[0-9]*$//' -e 's/[^a-z0-9]//g'; }

# seed_file NAME -> path of NAME in the mounted seed, accepting the 8.3 forms a
# plain ISO9660 tree shows (META_DAT.;1 -> meta_dat, USERDATA -> userdata).
seed_file() {
    [ -f "/mnt/seed/$1" ] && { echo "/mnt/seed/$1"; return 0; }
    want=$(norm "$1")
    for f in /mnt/seed/*; do
        [ -f "$f" ] || continue
        [ "$(norm "${f##*/}")" = "$want" ] && { echo "$f"; return 0; }
    done
    for f in /mnt/seed/*; do
        [ -f "$f" ] || continue
        n=$(norm "${f##*/}")
        [ ${#n} -ge 7 ] || continue
        case "$want" in "$n"*) echo "$f"; return 0 ;; esac
    done
    return 1
}

# yaml_get FILE KEY -> first scalar "KEY: value" (YAML) or "KEY": "value" (JSON)
yaml_get() {
    _v=$(awk -v k="$2" '
        { sub(/\r$/, "") }
        match($0, "^[ \t]*[\"'\'']?" k "[\"'\'']?[ \t]*:[ \t]*") {
            v = substr($0, RLENGTH + 1)
            if (v ~ /^[\"'\'']/) { q = substr(v, 1, 1); v = substr(v, 2); i = index(v, q); if (i) v = substr(v, 1, i - 1) }
            else { sub(/[ \t]+#.*$/, "", v); sub(/[ \t,]+$/, "", v) }
            if (v != "") { print v; exit }
        }' "$1" 2>/dev/null)
    if [ -z "$_v" ]; then
        _v=$(tr '\n' ' ' <"$1" | sed -n "s/.*\"$2\"[[:space:]]*:[[:space:]]*\"\([^\"]*\)\".*/\\1/p")
    fi
    echo "$_v"
}

# ssh_keys FILE KEY -> SSH public keys listed under KEY (block list, flow list,
# or a mapping of name: key), one per line.
ssh_keys() {
    awk -v k="$2" '
        function indent(s) { match(s, /^[ \t]*/); return RLENGTH }
        function keys(s,   t) {
            while (match(s, /(ssh-(rsa|dss|ed25519)|ecdsa-sha2-nistp[0-9]+|sk-(ssh-ed25519|ecdsa-sha2-nistp256)@openssh\.com)[ \t]+[A-Za-z0-9+\/=]+([ \t]+[^]\"'\'',]*)?/)) {
                t = substr(s, RSTART, RLENGTH); sub(/[ \t]+$/, "", t); print t
                s = substr(s, RSTART + RLENGTH)
            }
        }
        { sub(/\r$/, "") }
        inblk {
            if ($0 ~ /^[ \t]*(#.*)?$/) next
            ci = indent($0)
            if (ci > ki || (ci == ki && $0 ~ /^[ \t]*-/)) { keys($0); next }
            inblk = 0
        }
        match($0, "^[ \t]*(- )?[ \t]*[\"'\'']?" k "[\"'\'']?[ \t]*:") {
            ki = indent($0); if ($0 ~ /^[ \t]*- /) ki += 2
            keys(substr($0, RLENGTH + 1)); inblk = 1
        }' "$1" 2>/dev/null
}

SEED=
for b in /sys/class/block/*; do
    dev=/dev/${b##*/}
    case "${b##*/}" in loop*|ram*|zram*) continue ;; esac
    [ -b "$dev" ] || continue
    if [ "$(dd if="$dev" bs=1 skip=32769 count=5 2>/dev/null)" = CD001 ]; then
        label=$(dd if="$dev" bs=1 skip=32808 count=32 2>/dev/null | tr -d ' \000' | tr 'A-Z' 'a-z')
        [ "$label" = cidata ] && { SEED=$dev; break; }
    fi
done
[ -n "$SEED" ] || SEED=$(findfs LABEL=cidata 2>/dev/null || findfs LABEL=CIDATA 2>/dev/null)

IID=
if [ -n "$SEED" ] && mount -o ro "$SEED" /mnt/seed 2>/dev/null; then
    say "NoCloud seed $SEED"
    md=$(seed_file meta-data)
    ud=$(seed_file user-data)
    [ -n "$md" ] && cp "$md" /run/vmplane/meta-data
    [ -n "$ud" ] && cp "$ud" /run/vmplane/user-data
    nc=$(seed_file network-config) && cp "$nc" /run/vmplane/network-config
    umount /mnt/seed

    md=/run/vmplane/meta-data
    ud=/run/vmplane/user-data
    if [ -f $md ]; then
        IID=$(yaml_get $md instance-id)
        [ -n "$IID" ] || IID=$(yaml_get $md instance_id)
        hn=$(yaml_get $md local-hostname)
        [ -n "$hn" ] || hn=$(yaml_get $md hostname)
        [ -n "$hn" ] && echo "$hn" >/etc/hostname
        ssh_keys $md public-keys >>/run/vmplane/authorized_keys
        ssh_keys $md public_keys >>/run/vmplane/authorized_keys
    fi
    if [ -f $ud ] && head -n 1 $ud | grep -q '^#cloud-config'; then
        hn=$(yaml_get $ud hostname)
        [ -n "$hn" ] && echo "$hn" >/etc/hostname
        ssh_keys $ud ssh_authorized_keys >>/run/vmplane/authorized_keys
        ssh_keys $ud ssh-authorized-keys >>/run/vmplane/authorized_keys
    fi
    if [ -s /run/vmplane/authorized_keys ]; then
        mkdir -p /root/.ssh
        chmod 700 /root/.ssh
        awk '!seen[$0]++' /run/vmplane/authorized_keys >/root/.ssh/authorized_keys
        chmod 600 /root/.ssh/authorized_keys
        say "installed $(wc -l </root/.ssh/authorized_keys) ssh key(s) for root"
    fi
    if [ -z "$IID" ]; then
        IID=nocloud-$(cat $md $ud 2>/dev/null | md5sum | cut -c1-16)
    fi
    echo "$IID" >/run/vmplane/instance-id
else
    say "no NoCloud seed found"
fi
h=$(cut -d. -f1 /etc/hostname)
hostname "$h"
echo "127.0.1.1 $(cat /etc/hostname) $h" >>/etc/hosts

# --- network: DHCP on every ethernet NIC (slirp hands out 10.0.2.15) ---
for n in /sys/class/net/*; do
    ifc=${n##*/}
    [ "$ifc" = lo ] && continue
    ip link set "$ifc" up
    udhcpc -i "$ifc" -s /usr/share/udhcpc/default.script -b -t 10 -T 1 -A 5 \
        -p /run/udhcpc.$ifc.pid >>/var/log/udhcpc.log 2>&1
done

# --- sshd host key: this guest's own, made at its first boot and kept on the disk per
# instance-id (a VM cloned from another's disk makes its own), printed on the console in
# cloud-init's block, where vmplane reads it and pins it for `vmplane vm ssh` ---
keydir=/run/vmplane/ssh
[ -n "$DISK" ] && keydir=/mnt/disk/.vmplane/ssh/$(printf %s "${IID:-none}" | tr -c 'A-Za-z0-9._-' _)
mkdir -p "$keydir" && chmod 700 "$keydir"
HOSTKEY=$keydir/dropbear_ed25519_host_key
if [ ! -s "$HOSTKEY" ]; then
    rm -f "$HOSTKEY"
    if dropbearkey -t ed25519 -f "$HOSTKEY" >/dev/null 2>&1; then
        chmod 600 "$HOSTKEY"
        sync
        say "made this instance's SSH host key"
    else
        say "warning: dropbearkey could not make an SSH host key"
    fi
fi
pub=$(dropbearkey -y -f "$HOSTKEY" 2>/dev/null | grep '^ssh-ed25519 ' | cut -d' ' -f1,2)
if [ -n "$pub" ]; then
    echo "-----BEGIN SSH HOST KEY KEYS-----"
    echo "$pub root@$h"
    echo "-----END SSH HOST KEY KEYS-----"
fi

# --- sshd: dropbear on port 22 with that key ---
(
    while :; do
        dropbear -F -E -s -p 22 -r "$HOSTKEY" -P /run/dropbear.pid
        sleep 1
    done
) </dev/null >>/var/log/dropbear.log 2>&1 &

# --- user-data script: once per instance-id (needs the ext4 disk to remember) ---
if [ -n "$IID" ] && [ -f /run/vmplane/user-data ] && head -n 1 /run/vmplane/user-data | grep -q '^#!'; then
    marker=
    [ -n "$DISK" ] && marker=/mnt/disk/.vmplane/instances/$(printf %s "$IID" | tr -c 'A-Za-z0-9._-' _)
    if [ -n "$marker" ] && [ -e "$marker" ]; then
        say "user-data already ran for instance $IID"
    else
        chmod 700 /run/vmplane/user-data
        say "running user-data script for instance $IID"
        (cd / && /run/vmplane/user-data) </dev/null >/var/log/user-data.log 2>&1
        rc=$?
        say "user-data exited with status $rc"
        if [ -n "$marker" ]; then
            echo "$rc" >"$marker"
            sync
        fi
    fi
fi

touch /run/vmplane/boot-complete
mkdir -p /run/cloud-init && echo '{"v1": {"datasource": "DataSourceNoCloud", "errors": []}}' >/run/cloud-init/result.json
say "boot complete"

# --- root shell on the VGA console (tty1: what vmplane's graphical console shows), respawned
# forever; the tty is opened after setsid, so it becomes the shell's controlling terminal ---
(
    while :; do
        setsid sh -c 'exec <>/dev/tty1 >&0 2>&1; echo "vmplane-tiny: boot complete"; TERM=linux exec sh -l'
        sleep 1
    done
) </dev/null >/dev/null 2>&1 &

# --- root shell on the serial console, respawned forever ---
while :; do
    setsid cttyhack sh -l
    sleep 1
done
