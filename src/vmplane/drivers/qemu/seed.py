"""The cloud-init NoCloud seed: an ISO 9660 image (Joliet + Rock Ridge) labelled `cidata`
holding meta-data, user-data and, if given, network-config."""

import io
import json
import re
from pathlib import Path
from typing import Any

import pycdlib

from ...domain import VmSpec
from ...errors import DriverError

VOLUME_ID = "cidata"


def seed_files(spec: VmSpec) -> dict[str, bytes]:
    """The seed's files for `spec`: {"meta-data": ..., "user-data": ..., ["network-config": ...]}.

    meta-data carries instance-id (the VM id) and local-hostname (the VM name), merged with the
    user's metaData. SSH keys go into user-data as `ssh_authorized_keys` when the user gave no
    user-data, and into meta-data `public-keys` when they did (both are read by cloud-init and
    by the tiny guest).

    The keys land on the VM's login user (`loginUser` of its spec): user-data vmplane writes
    makes that user cloud-init's default user (`user: {name: …}`), which is where cloud-init
    puts `ssh_authorized_keys`; for root it lets root log in with them (`disable_root: false`,
    else cloud-init refuses root with "Please login as the user …"). The tiny guest puts every
    key on root. User-data the user gave is theirs: it decides the users.
    """
    extra = spec.extra or {}
    cloud = extra.get("cloudInit") or {}
    if not isinstance(cloud, dict):
        raise DriverError("cloudInit must be an object", vm_id=spec.id)
    keys = extra.get("sshKeys") or []
    if not isinstance(keys, list) or not all(isinstance(k, str) and "\n" not in k.strip() for k in keys):
        raise DriverError("sshKeys must be a list of one-line public keys", vm_id=spec.id)
    keys = [k.strip() for k in keys if k.strip()]

    meta: dict[str, Any] = {"instance-id": spec.id, "local-hostname": _hostname(spec.name)}
    user_meta = cloud.get("metaData")
    meta_tail = ""
    if isinstance(user_meta, dict):
        meta.update(user_meta)
    elif isinstance(user_meta, str) and user_meta.strip():
        try:
            parsed = json.loads(user_meta)
        except ValueError:
            parsed = None
        if isinstance(parsed, dict):
            meta.update(parsed)
        else:  # YAML text: kept as it is (see below)
            meta_tail = user_meta
    elif user_meta is not None:
        raise DriverError("cloudInit.metaData must be an object or text", vm_id=spec.id)

    user_data = cloud.get("userData")
    if isinstance(user_data, dict):
        user_data = "#cloud-config\n" + json.dumps(user_data, indent=2) + "\n"
    elif user_data is not None and not isinstance(user_data, str):
        raise DriverError("cloudInit.userData must be text or an object", vm_id=spec.id)
    if user_data:
        if keys:
            meta["public-keys"] = keys
    else:
        user_data = "#cloud-config\n" + _login_config(extra.get("loginUser"), bool(keys))
        if keys:
            user_data += "ssh_authorized_keys:\n" + "".join(f"  - {json.dumps(k)}\n" for k in keys)

    # JSON is YAML: cloud-init and the tiny guest both read it.
    meta_text = json.dumps(meta, indent=2) + "\n"
    if meta_tail:  # the user's YAML as written, then our keys that it does not set
        present = set(re.findall(r"^[\"']?([A-Za-z0-9_.-]+)[\"']?[ \t]*:", meta_tail, re.MULTILINE))
        meta_text = meta_tail.rstrip("\n") + "\n" + _json_as_block_yaml({k: v for k, v in meta.items() if k not in present})
    files = {"meta-data": meta_text.encode(), "user-data": user_data.encode()}
    network = cloud.get("networkConfig")
    if isinstance(network, dict):
        files["network-config"] = (json.dumps(network, indent=2) + "\n").encode()
    elif isinstance(network, str) and network.strip():
        files["network-config"] = network.encode()
    elif network not in (None, ""):
        raise DriverError("cloudInit.networkConfig must be an object or text", vm_id=spec.id)
    return files


def write_seed_iso(dest: Path, files: dict[str, bytes]) -> None:
    """Write the ISO with `files` at its root (Rock Ridge and Joliet names keep the dashes)."""
    iso = pycdlib.PyCdlib()
    iso.new(interchange_level=3, vol_ident=VOLUME_ID, sys_ident="LINUX", joliet=3, rock_ridge="1.09")
    try:
        for name, data in files.items():
            iso_name = "/" + name.upper().replace("-", "_").replace(".", "_") + ".;1"
            iso.add_fp(io.BytesIO(data), len(data), iso_path=iso_name, rr_name=name, joliet_path="/" + name)
        iso.write(str(dest))
    finally:
        iso.close()


def read_seed_iso(path: Path) -> dict[str, bytes]:
    """The files of a seed ISO by their Rock Ridge names (for checks and tests)."""
    iso = pycdlib.PyCdlib()
    iso.open(str(path))
    try:
        out: dict[str, bytes] = {}
        for child in iso.list_children(rr_path="/"):
            if child.is_dot() or child.is_dotdot():
                continue
            name = child.rock_ridge.name().decode()
            buf = io.BytesIO()
            iso.get_file_from_iso_fp(buf, rr_path="/" + name)
            out[name] = buf.getvalue()
        return out
    finally:
        iso.close()


def volume_id(path: Path) -> str:
    iso = pycdlib.PyCdlib()
    iso.open(str(path))
    try:
        return str(iso.pvd.volume_identifier.decode().strip())
    finally:
        iso.close()


def _login_config(login: Any, keys: bool) -> str:
    """The cloud-config lines that make `login` the user the VM's keys go to (none for a spec
    from before VMs knew their login user)."""
    if not isinstance(login, str) or not login:
        return ""
    if login == "root":
        return "disable_root: false\n" if keys else ""
    return f"user:\n  name: {json.dumps(login)}\n"


def _hostname(name: str) -> str:
    """A valid hostname from a VM name (letters, digits, dashes; at most 63 characters)."""
    out = "".join(c if c.isascii() and (c.isalnum() or c == "-") else "-" for c in name.lower()).strip("-")
    return out[:63].strip("-") or "vm"


def _json_as_block_yaml(data: dict[str, Any]) -> str:
    """Top-level keys as block YAML with JSON (flow) values, so more YAML can follow."""
    return "".join(f"{json.dumps(k)}: {json.dumps(v)}\n" for k, v in data.items())
