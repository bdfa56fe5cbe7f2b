"""Shared set-up for engine tests: a local repository and a config pointing at a site folder."""

from __future__ import annotations

from pathlib import Path

from resilience.repository.backup import Backup
from resilience.repository.repo import Repository
from resilience.repository.restore import restore_to
from resilience.repository.store import LocalStore
from resilience.sources.local import LocalSource

PASSWORD = b"correct horse battery staple"


def new_repo(path: Path) -> Repository:
    return Repository.init(LocalStore(path), PASSWORD, pack_size=1 << 20)


def reopen(repo: Repository) -> Repository:
    r = Repository.open(LocalStore(repo.store.url), PASSWORD, pack_size=1 << 20)
    r.load_index()
    return r


def backup(repo: Repository, src: Path, parent=None, exclude=None, site="portal"):
    return Backup(repo, LocalSource(src, exclude), site=site, parent=parent).run()


def roundtrip(repo: Repository, src: Path, dest: Path):
    snap, stats = backup(repo, src)
    fresh = reopen(repo)
    restore_to(fresh, fresh.find_snapshot(snap.id), dest)
    return snap, stats


def write_config(tmp: Path, site: Path, repo: Path, extra: str = "") -> Path:
    cfg = tmp / "resilience.yml"
    cfg.write_text(f"""\
repository: {{url: {repo}, pack_size_mib: 1}}
evidence: {{dir: {tmp / 'evidence'}}}
sites:
  portal:
    files: {{hosts: [localhost], path: {site}}}
retention: {{keep_last: 3}}
{extra}""")
    return cfg
