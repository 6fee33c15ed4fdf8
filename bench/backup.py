"""Backup and restore throughput for a 1 GiB disk full of data, and the size of an
incremental backup after 1 % of its blocks change.

    .venv/bin/python bench/backup.py [--size-mb 1024]

Uses the qemu driver and the backup store directly — the code the backup and restore jobs
run — on a stopped VM whose disk is filled from the host (no guest needed to make data).
"""

import argparse
import asyncio
import os
import random
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
from vmplane import ids  # noqa: E402
from vmplane.backupstore import BackupStore  # noqa: E402
from vmplane.domain import Resources, VmSpec  # noqa: E402
from vmplane.drivers.qemu import QemuDriver  # noqa: E402
from vmplane.drivers.qemu.images import run_tool  # noqa: E402

BLOCK = 64 * 1024


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size-mb", type=int, default=1024)
    args = ap.parse_args()
    size = args.size_mb * 2**20
    work = Path(tempfile.mkdtemp(prefix="vmplane-bench-backup-"))
    driver = QemuDriver(state_dir=work / "qemu", hostname="bench", accel="tcg")
    await driver.open()
    store = BackupStore(work / "repo", work / "repo-password")
    vm = VmSpec(id=ids.new_id("vm"), uuid=ids.new_uuid(), name="bench", resources=Resources(1, 256, args.size_mb // 1024 or 1))
    await driver.create_vm(vm)
    raw = work / "fill.raw"
    with raw.open("wb") as f:  # data that does not compress or de-duplicate
        for _ in range(size // (16 * 2**20)):
            f.write(os.urandom(16 * 2**20))
    disk = work / "qemu" / "vms" / vm.id / "disk.qcow2"
    await run_tool(["qemu-img", "convert", "-f", "raw", "-O", "qcow2", str(raw), str(disk)], "fill")
    mb = size / 2**20

    export = work / "export.raw"
    t = time.perf_counter()
    await driver.export_disk(vm.id, export)
    first = await store.put(export, "bench")
    backup_s = time.perf_counter() - t
    export.unlink()

    with raw.open("r+b") as f:  # change 1 % of the 64 KiB blocks
        blocks = size // BLOCK
        for b in random.Random(7).sample(range(blocks), blocks // 100):
            f.seek(b * BLOCK)
            f.write(os.urandom(BLOCK))
    await run_tool(["qemu-img", "convert", "-f", "raw", "-O", "qcow2", str(raw), str(disk)], "change")
    t = time.perf_counter()
    await driver.export_disk(vm.id, export)
    second = await store.put(export, "bench")
    incr_s = time.perf_counter() - t
    export.unlink()

    restored = work / "restored.raw"
    t = time.perf_counter()
    await store.get(second.snapshot, restored)
    await driver.import_disk(vm.id, restored)
    restore_s = time.perf_counter() - t

    print(f"backup of a {mb:.0f} MiB disk of data: {mb / backup_s:.0f} MB/s ({backup_s:.1f} s, {first.added_bytes / 2**20:.0f} MiB stored)")
    print(f"incremental after 1% of 64 KiB blocks changed: {second.added_bytes / 2**20:.1f} MiB stored "
          f"({100 * second.added_bytes / first.added_bytes:.1f}% of the first), {mb / incr_s:.0f} MB/s")  # fmt: skip
    print(f"restore: {mb / restore_s:.0f} MB/s ({restore_s:.1f} s, every chunk verified)")
    await driver.delete_vm(vm.id)
    await driver.close()


if __name__ == "__main__":
    asyncio.run(main())
