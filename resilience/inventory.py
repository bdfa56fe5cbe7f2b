"""Read an Ansible inventory with Ansible's own machinery (``ansible-inventory --list``).

The contract: :func:`load_inventory` returns an :class:`Inventory` (hosts with their merged
variables, groups with their members) or raises ConfigError naming the file and Ansible's
reason. YAML, INI, directories and dynamic inventories all work because Ansible reads them.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

from .errors import ConfigError, UsageError


@dataclass
class Inventory:
    source: Path
    hosts: dict[str, dict[str, Any]] = field(default_factory=dict)
    groups: dict[str, list[str]] = field(default_factory=dict)

    def host(self, name: str) -> dict[str, Any]:
        """Variables of ``name``; UsageError listing known hosts if it is not in the inventory."""
        if name not in self.hosts:
            known = ", ".join(sorted(self.hosts)) or "none"
            raise UsageError(f"host {name!r} is not in the inventory {self.source} (known: {known})")
        return self.hosts[name]

    def address(self, name: str) -> str:
        """The address to connect to: ``ansible_host``, else the inventory name."""
        return str(self.host(name).get("ansible_host", name))


def ansible_bin(name: str) -> str:
    """Path of an Ansible executable: next to this Python first (the venv), then $PATH."""
    local = Path(sys.executable).parent / name
    if local.exists():
        return str(local)
    found = shutil.which(name)
    if not found:
        raise UsageError(f"{name} not found; install ansible-core (make install)")
    return found


def ansible_env() -> dict[str, str]:
    """Environment for Ansible subprocesses: strict host keys, unparsed inventory is an error."""
    env = dict(os.environ)
    env.update(
        ANSIBLE_INVENTORY_UNPARSED_FAILED="True",
        ANSIBLE_HOST_KEY_CHECKING="True",
        ANSIBLE_NOCOLOR="True",
        ANSIBLE_RETRY_FILES_ENABLED="False",
        ANSIBLE_DEPRECATION_WARNINGS="False",
        ANSIBLE_LOCALHOST_WARNING="False",
    )
    return env


@lru_cache(maxsize=8)
def _load(path: str, mtime_ns: int) -> Inventory:
    proc = subprocess.run(
        [ansible_bin("ansible-inventory"), "-i", path, "--list"],
        capture_output=True, text=True, env=ansible_env(), timeout=120, check=False,
    )
    if proc.returncode != 0:
        lines = [ln.strip() for ln in proc.stderr.splitlines() if ln.strip()]
        reason = next((ln for ln in lines if "ERROR" in ln or "error" in ln.lower()), lines[-1] if lines else "")
        reason = reason.replace("[ERROR]:", "").replace("ERROR!", "").strip() or "not a valid Ansible inventory"
        raise ConfigError([f"{path}: inventory: {reason}"])
    try:
        data = json.loads(proc.stdout)
    except ValueError:
        raise ConfigError([f"{path}: inventory: ansible-inventory printed no JSON"]) from None
    hostvars = data.get("_meta", {}).get("hostvars", {})
    inv = Inventory(Path(path))
    groups: dict[str, list[str]] = {}

    def walk(group: str, seen: set[str]) -> list[str]:
        if group in seen:
            return []
        seen.add(group)
        node = data.get(group, {})
        members = list(node.get("hosts", []))
        for child in node.get("children", []):
            members += walk(child, seen)
        return members

    for group in data:
        if group != "_meta":
            groups[group] = sorted(set(walk(group, set())))
    for name in groups.get("all", []):
        inv.hosts[name] = dict(hostvars.get(name, {}))
    for name in hostvars:
        inv.hosts.setdefault(name, dict(hostvars[name]))
    inv.groups = groups
    return inv


def load_inventory(path: str | os.PathLike) -> Inventory:
    """Load the inventory at ``path`` (cached per file modification time)."""
    p = Path(path)
    try:
        st = p.stat()
    except FileNotFoundError:
        raise ConfigError([f"{p}: inventory: file not found"]) from None
    except OSError as exc:
        raise ConfigError([f"{p}: inventory: {exc.strerror}"]) from None
    return _load(str(p), st.st_mtime_ns)
