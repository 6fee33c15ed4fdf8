#!/bin/sh
# Minimal shutdown(8) for qemu-guest-agent's guest-shutdown, which runs
# "/sbin/shutdown -P|-H|-r +0 <message>". busybox has no shutdown applet.
action=poweroff
for a in "$@"; do
    case "$a" in
        -r|--reboot) action=reboot ;;
        -H|--halt) action=halt ;;
    esac
done
sync
exec "$action" -f
