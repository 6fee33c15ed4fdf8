#!/bin/sh
# busybox udhcpc event script (installed as /usr/share/udhcpc/default.script).
# udhcpc exports: interface ip mask(prefix length) broadcast router dns domain
[ -n "$1" ] || exit 1
RESOLV=/etc/resolv.conf

case "$1" in
    deconfig)
        ip -4 addr flush dev "$interface"
        ip link set "$interface" up
        ;;
    bound|renew)
        ip link set "$interface" up
        cur=$(ip -4 -o addr show dev "$interface" | awk '{print $4}' | head -n 1)
        if [ "$cur" != "$ip/${mask:-24}" ]; then
            ip -4 addr flush dev "$interface"
            ip -4 addr add "$ip/${mask:-24}" broadcast "${broadcast:-+}" dev "$interface"
        fi
        if [ -n "$router" ]; then
            while ip -4 route del default dev "$interface" 2>/dev/null; do :; done
            for r in $router; do
                ip -4 route add default via "$r" dev "$interface" && break
            done
        fi
        {
            [ -n "$domain" ] && echo "search $domain"
            for d in $dns; do echo "nameserver $d"; done
        } >"$RESOLV.tmp"
        mv "$RESOLV.tmp" "$RESOLV"
        echo "vmplane-tiny: $interface $ip/${mask:-24} via ${router:-none}" >/dev/console
        ;;
    leasefail|nak)
        ;;
esac
exit 0
