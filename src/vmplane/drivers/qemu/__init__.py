"""The `qemu` driver: real VMs, one `qemu-system-x86_64` process per VM, over QMP.

    driver = QemuDriver(state_dir=..., hostname=..., accel=(await pick_accel("auto", image))[0])
"""

from .accel import pick_accel
from .cmdline import build_argv
from .driver import QemuDriver

__all__ = ["QemuDriver", "build_argv", "pick_accel"]
