"""Hypervisor drivers: the one boundary between vmplane and hypervisors."""
