#!/bin/sh
# busybox acpid handler for the ACPI power button (QMP system_powerdown).
# Installed as /etc/acpi/PWRF/00000080.
sync
exec poweroff -f
