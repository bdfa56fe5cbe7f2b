"""Open the repository (or a copy destination) described by the config."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from ..config import Config, RepositoryConfig, RepositoryCopy
from ..errors import UsageError
from ..repository.repo import Repository, read_password
from ..repository.store import Store, open_store


def repository_config(cfg: Config) -> RepositoryConfig:
    if cfg.repository is None:
        raise UsageError(f"{cfg.source}: repository: not configured")
    return cfg.repository


def store_for(rc: RepositoryCopy) -> Store:
    """The storage backend for a repository (or copy) entry of the config."""
    return open_store(rc.url, endpoint=rc.endpoint, region=rc.region, access_key_id=rc.access_key_id,
                      secret_access_key_file=rc.secret_access_key_file)


def _options(cfg: Config) -> dict:
    rc = cfg.repository
    return {"compression": rc.compression, "pack_size": rc.pack_size_mib << 20} if rc else {}


def password_for(cfg: Config, rc: RepositoryCopy) -> bytes:
    """The password of ``rc``: its own password file, else the repository's, else the environment."""
    return read_password(rc.password_file or (cfg.repository.password_file if cfg.repository else None))


def open_repository(cfg: Config, rc: RepositoryCopy | None = None) -> Repository:
    """Open the configured repository (or copy ``rc``); UsageError/TemporaryError on failure."""
    rc = rc or repository_config(cfg)
    return Repository.open(store_for(rc), password_for(cfg, rc), **_options(cfg))


def init_repository(cfg: Config, rc: RepositoryCopy | None = None, like: Repository | None = None) -> Repository:
    """Create the configured repository (or copy destination ``rc``)."""
    rc = rc or repository_config(cfg)
    return Repository.init(store_for(rc), password_for(cfg, rc), like=like, **_options(cfg))


@contextlib.contextmanager
def opened(cfg: Config, *, lock: str | None = "shared") -> Iterator[Repository]:
    """Open the repository, hold a lock (``shared``, ``exclusive`` or None), close at the end."""
    repo = open_repository(cfg)
    try:
        if lock is None:
            yield repo
        else:
            with repo.lock(exclusive=lock == "exclusive"):
                yield repo
    finally:
        repo.close()
