"""Networking: the shared model (networks, NICs, firewall), IPAM, and the host side
(bridges, taps, dnsmasq, nftables) that drivers use on their node."""
