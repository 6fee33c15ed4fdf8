"""vmplane.drivers.statefile: a rewrite leaves the new content whole at the path, reuses the
previous generation's file, and falls back to a plain rename where the swap is unavailable."""

import os
from pathlib import Path

import pytest

from vmplane.drivers import statefile


def test_rewrites_in_place_and_swaps(tmp_path: Path) -> None:
    path = tmp_path / "node-1.json"
    statefile.rewrite(path, b'{"vms": [1, 2, 3]}')
    assert path.read_bytes() == b'{"vms": [1, 2, 3]}'
    statefile.rewrite(path, b'{"vms": [1]}')  # shorter: no tail of the longer one left
    assert path.read_bytes() == b'{"vms": [1]}'
    spare = tmp_path / "node-1.json.tmp"
    assert spare.read_bytes() == b'{"vms": [1, 2, 3]}'  # the previous generation
    inodes = {os.stat(path).st_ino, os.stat(spare).st_ino}
    statefile.rewrite(path, b'{"vms": [1, 2]}')
    assert path.read_bytes() == b'{"vms": [1, 2]}'
    assert {os.stat(path).st_ino, os.stat(spare).st_ino} == inodes  # no file made or freed


def test_without_the_swap_a_rename_does_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(statefile, "_renameat2", None)
    path = tmp_path / "node-1.json"
    for content in (b"[1, 2, 3]", b"[4]", b"[5, 6]"):
        statefile.rewrite(path, content)
        assert path.read_bytes() == content
