"""Deep checks of a loaded config: the files it references and the hosts it names.

:func:`check_config` returns a list of ``file: key: reason`` problems (empty when all is well);
it never raises for a problem it can describe.
"""

from __future__ import annotations

import os
from pathlib import Path

from .config import Config
from .errors import ConfigError
from .inventory import load_inventory


def _readable(path: Path) -> str | None:
    if not path.exists():
        return "file not found"
    if path.is_dir():
        return "is a directory"
    if not os.access(path, os.R_OK):
        return "permission denied"
    return None


def check_config(cfg: Config) -> list[str]:
    """Return every problem found in the files and hosts that ``cfg`` references."""
    src = cfg.source
    problems: list[str] = []
    files: list[tuple[str, Path | None]] = []
    if cfg.repository:
        files += [("repository.password_file", cfg.repository.password_file),
                  ("repository.secret_access_key_file", cfg.repository.secret_access_key_file)]
        for i, copy in enumerate(cfg.repository.copies):
            files += [(f"repository.copies.{i}.password_file", copy.password_file),
                      (f"repository.copies.{i}.secret_access_key_file", copy.secret_access_key_file)]
    files += [("ssh.identity_file", cfg.ssh.identity_file), ("ssh.known_hosts", cfg.ssh.known_hosts)]
    for name, site in cfg.sites.items():
        if site.database:
            files += [(f"sites.{name}.database.password_file", site.database.password_file),
                      (f"sites.{name}.database.superuser_password_file", site.database.superuser_password_file)]
    for key, path in files:
        if path is not None and (reason := _readable(Path(path))):
            problems.append(f"{src}: {key}: {reason}: {path}")

    if cfg.inventory is not None:
        try:
            inv = load_inventory(cfg.inventory)
        except ConfigError as exc:
            problems.append(f"{src}: inventory: {exc.problems[0]}")
            return problems
        for name, site in cfg.sites.items():
            named = []
            if site.files:
                named += [("files.hosts", h) for h in site.files.hosts if h != "localhost"]
            if site.database:
                named.append(("database.host", site.database.host))
            if site.balancer:
                named.append(("balancer.host", site.balancer.host))
            for key, host in named:
                if host not in inv.hosts:
                    problems.append(f"{src}: sites.{name}.{key}: host {host!r} is not in the inventory")
    return problems
