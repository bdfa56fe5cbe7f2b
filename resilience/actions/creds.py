"""``resilience creds``: audit admin passwords on every host, rotate one, show a stored one.

- :func:`audit` runs ``playbooks/creds_audit.yml`` (read only) on every inventory host: the
  hashes are checked against the weak list *on each host* and never leave it.
- :func:`rotate` generates a strong password (``secrets``), keeps an encrypted copy for the
  operator *before* changing anything (a password set but lost would lock the operator out),
  sets it with ``playbooks/rotate_password.yml`` (every task that sees it is ``no_log``; it
  travels only in ansible-runner's 0600 extravars file) and then promotes the copy.
- :func:`show` decrypts a stored copy for the operator.

The password is never returned, logged, recorded or put in an exception message. Stored
copies live in ``credentials.dir`` (default ``<state>/credentials``) as
``<host>-<user>.enc``: JSON with an scrypt salt and AES-256-GCM ciphertext whose associated
data binds it to its host and user (a copy renamed to another account does not open). The key
comes from ``credentials.password_file``, else from the repository password.
"""

from __future__ import annotations

import contextlib
import fnmatch
import json
import os
import re
import secrets
import string
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from ..config import Config
from ..control.ansible import run_playbook
from ..errors import PlaybookError, ResilienceError, UsageError
from ..evidence import Ledger
from ..repository.crypto import NONCE, SCRYPT_N, SCRYPT_P, SCRYPT_R, b64, derive, unb64
from ..secrets import read_secret_file
from ..state import state_dir

DEFAULT_WEAK_LIST = Path(__file__).resolve().parents[1] / "data" / "weak-passwords.txt"
_USER_RE = re.compile(r"^[a-z_][a-z0-9_.-]{0,31}\$?$")
# No ':' (chpasswd's separator), no quotes, backslashes or whitespace: safe to type and to
# pass through any shell or form an operator may have to use it in.
SYMBOLS = "!#%+-.=?@^_~"
ALPHABET = string.ascii_letters + string.digits + SYMBOLS
FORMAT = "resilience-credential-1"


# -- pure helpers ----------------------------------------------------------------------------

def generate_password(length: int = 24) -> str:
    """A random password of ``length`` characters from :data:`ALPHABET` (about 6.2 bits each)
    with at least one lower case letter, upper case letter, digit and symbol (complexity rules
    of most systems)."""
    if length < 16:
        raise ValueError("length must be at least 16")
    rng = secrets.SystemRandom()
    while True:
        pw = "".join(rng.choice(ALPHABET) for _ in range(length))
        if (any(c.islower() for c in pw) and any(c.isupper() for c in pw)
                and any(c.isdigit() for c in pw) and any(c in SYMBOLS for c in pw)):
            return pw


def check_user(user: str, allowed: list[str]) -> None:
    """UsageError unless ``user`` is a valid account name matching one of ``allowed`` (glob
    patterns; empty list: any account)."""
    if not _USER_RE.match(user or ""):
        raise UsageError(f"invalid account name {user!r}")
    if allowed and not any(fnmatch.fnmatchcase(user, pat) for pat in allowed):
        raise UsageError(f"account {user!r} is not in credentials.allowed_users ({', '.join(allowed)})")


def read_weak_list(path: str | os.PathLike | None = None) -> list[str]:
    """The words of a weak-password list (one a line, ``#`` comments and blank lines skipped)."""
    p = Path(path) if path else DEFAULT_WEAK_LIST
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise UsageError(f"{p}: cannot read the weak-password list: {exc.strerror}") from None
    words = [line.strip() for line in text.splitlines()]
    return list(dict.fromkeys(w for w in words if w and not w.startswith("#")))


def summarise(per_host: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """One finding row per (host, account) that has findings, from the playbook's per-host
    ``{accounts: [...]}``, sorted by host then user."""
    rows = []
    for host in sorted(per_host):
        for acc in per_host[host].get("accounts", []):
            if acc.get("findings"):
                rows.append({"host": host, "user": acc["user"], "findings": list(acc["findings"]),
                             "age_days": acc.get("age_days"), "state": acc.get("state"),
                             "admin": acc.get("admin", [])})
    return rows


def _aad(host: str, user: str) -> bytes:
    return f"{FORMAT}:{host}:{user}".encode()


def seal_secret(secret: str, key_password: bytes, host: str, user: str, *, meta: dict[str, Any] | None = None
                ) -> bytes:
    """The stored form (JSON bytes) of ``secret`` for ``host``/``user``: scrypt(key_password,
    salt) → AES-256-GCM, associated data = format, host and user."""
    salt = secrets.token_bytes(32)
    key = derive(key_password, salt, SCRYPT_N, SCRYPT_R, SCRYPT_P)
    nonce = os.urandom(NONCE)
    ct = AESGCM(key).encrypt(nonce, secret.encode(), _aad(host, user))
    doc = {"format": FORMAT, "host": host, "user": user, "kdf": "scrypt", "n": SCRYPT_N, "r": SCRYPT_R,
           "p": SCRYPT_P, "salt": b64(salt), "data": b64(nonce + ct), **(meta or {})}
    return json.dumps(doc, indent=1, sort_keys=True).encode()


def open_secret(raw: bytes, key_password: bytes, host: str, user: str) -> str:
    """The secret in a stored form made by :func:`seal_secret` for the same host and user;
    ResilienceError (no detail that could help a guesser) when it does not open."""
    try:
        doc = json.loads(raw)
        if doc.get("format") != FORMAT or doc.get("kdf") != "scrypt":
            raise ValueError("unknown format")
        key = derive(key_password, unb64(doc["salt"]), int(doc["n"]), int(doc["r"]), int(doc["p"]))
        sealed = unb64(doc["data"])
        return AESGCM(key).decrypt(sealed[:NONCE], sealed[NONCE:], _aad(host, user)).decode()
    except (ValueError, KeyError, TypeError, InvalidTag):
        raise ResilienceError(f"the stored password of {user}@{host} does not open "
                              "(wrong key, altered file, or made for another account)") from None


# -- config-dependent helpers ----------------------------------------------------------------

def credentials_dir(cfg: Config) -> Path:
    """Where stored passwords live: ``credentials.dir``, else ``<state>/credentials``."""
    return Path(cfg.credentials.dir) if cfg.credentials.dir else state_dir() / "credentials"


def stored_path(cfg: Config, host: str, user: str, *, pending: bool = False) -> Path:
    """The file of the stored password of ``user`` on ``host`` (``.pending`` while a rotation
    has not been confirmed)."""
    return credentials_dir(cfg) / f"{host}-{user}.enc{'.pending' if pending else ''}"


def key_password(cfg: Config) -> bytes:
    """The key for stored passwords: ``credentials.password_file``, else the repository's
    password (file or $RESILIENCE_PASSWORD)."""
    from ..repository.repo import read_password

    if cfg.credentials.password_file:
        return read_secret_file(cfg.credentials.password_file, "credentials password")
    return read_password(cfg.repository.password_file if cfg.repository else None)


def _write_private(path: Path, data: bytes) -> None:
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(path.parent, 0o700)
    tmp = path.with_name(path.name + f".tmp-{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _host_known(cfg: Config, host: str) -> None:
    from ..inventory import load_inventory

    if cfg.inventory is None:
        raise UsageError(f"{cfg.source}: inventory: needed for credentials")
    load_inventory(cfg.inventory).host(host)


# -- actions ---------------------------------------------------------------------------------

def audit(cfg: Config, ledger: Ledger, *, max_age_days: int | None = None, hosts: list[str] | None = None,
          users: list[str] | None = None, quiet: bool = True) -> dict[str, Any]:
    """Audit the admin accounts of ``hosts`` (default: every inventory host). Returns
    ``{run, max_age_days, hosts: {host: {today, accounts}}, findings: [...], failed_hosts:
    {host: reason}}``. Never raises for findings (the CLI turns them into exit 1); raises
    PlaybookError only when no host answered."""
    c = cfg.credentials
    days = max_age_days if max_age_days is not None else int(c.max_age // 86400)
    if hosts:
        for h in hosts:
            _host_known(cfg, h)
    elif cfg.inventory is None:
        raise UsageError(f"{cfg.source}: inventory: needed for credentials")
    weak = read_weak_list(c.weak_list)
    extravars = {"max_age_days": days, "admin_groups": list(c.admin_groups), "weak_passwords": weak,
                 "audit_users": list(users or [])}
    out: dict[str, Any] = {"max_age_days": days, "admin_groups": list(c.admin_groups),
                           "weak_list_words": len(weak), "hosts": {}, "failed_hosts": {}}
    run = ledger.start_run("creds-audit", {"hosts": hosts or "all", "max_age_days": days,
                                           "admin_groups": list(c.admin_groups), "weak_list_words": len(weak)})
    with run:
        out["run"] = run.id
        try:
            result = run_playbook(cfg, "creds_audit.yml", limit=hosts, extravars=extravars, run=run, quiet=quiet)
        except PlaybookError as exc:
            if exc.result is None:
                raise
            result = exc.result
            for f in result.failures:
                out["failed_hosts"][f["host"]] = f["msg"]
            if not any(h != "_run" for h in result.facts):
                raise
        for host, facts in sorted(result.facts.items()):
            if host == "_run" or "accounts" not in facts:
                continue
            out["hosts"][host] = {"today": int(facts.get("today") or 0), "accounts": facts["accounts"]}
        out["findings"] = summarise(out["hosts"])
        with run.step("audit verdict") as step:
            step.details.update(findings=out["findings"], failed_hosts=out["failed_hosts"],
                                hosts=sorted(out["hosts"]))
        run.details.update(findings=len(out["findings"]), hosts=len(out["hosts"]))
    return out


def rotate(cfg: Config, ledger: Ledger, host: str, user: str, *, dry_run: bool = False, run=None,
           quiet: bool = True) -> dict[str, Any]:
    """Give ``user`` on ``host`` a new strong password and keep it encrypted for the operator
    (see :func:`show`). Steps go into ``run`` when given (a runbook's), else into a new
    ``creds-rotate`` run. ``dry_run`` checks the host and account (playbook in check mode) and
    changes nothing. Returns ``{host, user, dry_run, changed, stored, rotated_at, run}`` —
    never the password. UsageError for an unknown host, a bad or disallowed account name;
    PlaybookError when the host refuses (the pending copy is then kept: the password may or
    may not have been set, and ``creds show --pending`` shows it)."""
    _host_known(cfg, host)
    check_user(user, cfg.credentials.allowed_users)
    own = run is None
    if own:
        run = ledger.start_run("creds-rotate", {"host": host, "user": user}, dry_run=dry_run)
    final, pending = stored_path(cfg, host, user), stored_path(cfg, host, user, pending=True)
    res: dict[str, Any] = {"host": host, "user": user, "dry_run": dry_run, "changed": False,
                           "stored": str(final), "run": run.id}
    with run if own else contextlib.nullcontext():
        if dry_run:
            run_playbook(cfg, "rotate_password.yml", limit=[host], check=True, run=run, quiet=quiet,
                         extravars={"target": host, "account": user})
            return res
        kp = key_password(cfg)  # before generating anything: a missing key changes nothing
        secret = generate_password(cfg.credentials.length)
        rotated_at = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        with run.step("keep the new password encrypted", host=host) as step:
            sealed = seal_secret(secret, kp, host, user, meta={"rotated_at": rotated_at, "run": run.id})
            _write_private(pending, sealed)
            step.details.update(user=user, file=str(pending), key=("credentials.password_file"
                                if cfg.credentials.password_file else "repository password"))
        try:
            run_playbook(cfg, "rotate_password.yml", limit=[host], run=run, quiet=quiet,
                         extravars={"target": host, "account": user, "new_secret": secret})
        except PlaybookError as exc:
            # The host may have taken the password before failing: keep the pending copy.
            raise PlaybookError(f"{exc.message}; the new password may or may not be set: its encrypted copy is "
                                f"kept (resilience creds show --host {host} --user {user} --pending)",
                                result=exc.result) from None
        finally:
            del secret
        with run.step("promote the stored password", host=host) as step:
            if final.exists():
                os.replace(final, final.with_name(final.name + ".previous"))
            os.replace(pending, final)
            step.details.update(user=user, file=str(final))
        res.update(changed=True, rotated_at=rotated_at)
        run.details.update(host=host, user=user, rotated_at=rotated_at)
    return res


def show(cfg: Config, ledger: Ledger, host: str, user: str, *, pending: bool = False) -> str:
    """The stored password of ``user`` on ``host`` (decrypted). The reading is recorded (who,
    which account; never the password). UsageError when none is stored."""
    path = stored_path(cfg, host, user, pending=pending)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise UsageError(f"no stored {'pending ' if pending else ''}password for {user}@{host} ({path})") from None
    run = ledger.start_run("creds-show", {"host": host, "user": user, "pending": pending})
    with run, run.step("decrypt stored password", host=host) as step:
        step.details.update(user=user, file=str(path))
        return open_secret(raw, key_password(cfg), host, user)
