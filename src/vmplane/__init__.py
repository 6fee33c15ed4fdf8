"""vmplane: a self-hosted control plane for virtual machines."""

__version__ = "0.1.0"
