"""Read an Ansible inventory with Ansible's own machinery (``ansible-inventory --list``).

The contract: :func:`load_inventory` returns an :class:`Inventory` (hosts with their merged
variables, groups with their members) or raises ConfigError naming the file and Ansible's
reason. YAML, INI, directories and dynamic inventories all work because Ansible reads them.
"""

from __future__ import annotations

import hashlib
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
from .fsutil import atomic_write


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


def _list(path: str) -> str:
    proc = subprocess.run(
        [ansible_bin("ansible-inventory"), "-i", path, "--list"],
        capture_output=True, text=True, env=ansible_env(), timeout=120, check=False,
    )
    if proc.returncode != 0:
        lines = [ln.strip() for ln in proc.stderr.splitlines() if ln.strip()]
        reason = next((ln for ln in lines if "ERROR" in ln or "error" in ln.lower()), lines[-1] if lines else "")
        reason = reason.replace("[ERROR]:", "").replace("ERROR!", "").strip() or "not a valid Ansible inventory"
        raise ConfigError([f"{path}: inventory: {reason}"])
    return proc.stdout


# ansible-inventory costs ~0.8 s of start-up, more than a whole no-change backup may take. Its
# answer for a static inventory file depends only on that file, the group_vars/host_vars
# folders beside it and Ansible's version: cached on disk under that fingerprint. Dynamic
# inventories (executables, plugin configs) and inventories holding anything that looks
# like a secret are never cached.
_SECRET_HINTS = ("pass", "secret", "token", "vault", "key_data")


def _fingerprint(path: Path) -> str | None:
    try:
        st = path.stat()
        if not path.is_file() or st.st_mode & 0o111 or st.st_size > (4 << 20):
            return None
        text = path.read_bytes()
    except OSError:
        return None
    if b"plugin:" in text:
        return None
    h = hashlib.sha256(text)
    h.update(ansible_bin("ansible-inventory").encode())
    for sub in ("group_vars", "host_vars"):
        for root, dirs, files in os.walk(path.parent / sub):
            dirs.sort()
            for name in sorted(files):
                f = os.path.join(root, name)
                try:
                    fst = os.stat(f)
                except OSError:
                    return None
                h.update(f"{f}\0{fst.st_size}\0{fst.st_mtime_ns}\0{fst.st_ino}\0".encode())
    try:
        from importlib.metadata import version

        h.update(version("ansible-core").encode())
    except Exception:  # noqa: BLE001 - no version, no cache
        return None
    return h.hexdigest()


def _looks_secret(hostvars: dict[str, Any]) -> bool:
    return any(any(hint in str(k).lower() for hint in _SECRET_HINTS) or "__ansible_vault" in str(v)
               for hv in hostvars.values() for k, v in hv.items())


def _cached_list(path: str) -> str:
    from .state import state_dir

    fp = _fingerprint(Path(path))
    cache = state_dir() / "cache" / "inventory" / f"{fp}.json" if fp else None
    if cache is not None:
        try:
            return cache.read_text()
        except OSError:
            pass
    out = _list(path)
    if cache is not None:
        try:
            data = json.loads(out)
            if not _looks_secret(data.get("_meta", {}).get("hostvars", {})):
                cache.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
                atomic_write(cache, out.encode())
        except (OSError, ValueError):
            pass  # a cache that cannot be written costs time, nothing else
    return out


@lru_cache(maxsize=8)
def _load(path: str, mtime_ns: int) -> Inventory:
    out = _cached_list(path)
    try:
        data = json.loads(out)
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
