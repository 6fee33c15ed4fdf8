"""What services need of the process they run in, as narrow Protocols the composition root
(runtime.py) satisfies: services sit beside replicas.py in the layers, and import none of it."""

from typing import Protocol


class Leadership(Protocol):
    """Whether this process leads the control-plane replicas sharing the store
    (replicas.Replicas; always, on SQLite): the leader alone runs the cron scheduler, the
    deployment reconciler and plugin health checks."""

    @property
    def leader(self) -> bool: ...
