"""Job handlers, one operation per module; `HANDLERS` maps task types to them."""

from ..engine import Handler
from .backups import BackupCreate, BackupDelete, VmRestore
from .iso_import import IsoImport
from .snapshots import SnapshotCreate, SnapshotDelete, VmRevert
from .template_delete import TemplateDelete
from .template_import import TemplateImport
from .template_update import TemplateUpdate
from .vm_create import VmCreate
from .vm_delete import VmDelete
from .vm_import import VmImport
from .vm_move import VmMigrate, VmMove
from .vm_network import VmNetwork
from .vm_power import VmPower
from .vm_update import VmUpdate


def all_handlers() -> dict[str, Handler]:
    power = VmPower()
    return {
        "vm-create": VmCreate(),
        "vm-delete": VmDelete(),
        "vm-update": VmUpdate(),
        "vm-start": power,
        "vm-stop": power,
        "vm-shutdown": power,
        "vm-reboot": power,
        "vm-power-cycle": power,
        "template-create": TemplateImport(),
        "template-update": TemplateUpdate(),
        "template-delete": TemplateDelete(),
        "snapshot-create": SnapshotCreate(),
        "snapshot-delete": SnapshotDelete(),
        "vm-revert": VmRevert(),
        "backup-create": BackupCreate(),
        "backup-delete": BackupDelete(),
        "vm-restore": VmRestore(),
        "vm-network": VmNetwork(),
        "vm-move": VmMove(),
        "vm-migrate": VmMigrate(),
        "vm-import": VmImport(),
        "iso-import": IsoImport(),
    }
