"""The evidence ledger: append-only JSON lines, hash-chained and signed with ed25519.

Layout of the evidence folder::

    ledger.jsonl     one record per line (canonical JSON, see below)
    ledger.head      signed {seq, hash} of the last committed record: detects truncation
    ledger.lock      flock(2) target: serialises appenders across processes
    signing.key      ed25519 private key, PKCS#8 PEM, mode 0600, made on first append
    signing.pub      the public key, OpenSSH format
    artifacts/RUN/   files kept as evidence by a run (logs, balancer dumps…)

A record is a JSON object with ``v`` (format 1), ``seq`` (0, 1, 2…), ``prev`` (sha256 hex of the
previous line's bytes; 64 zeros for the first), ``time`` (UTC ISO 8601), ``key`` (fingerprint of
the signing key), ``type`` and type-specific fields, and ``sig``: the base64 ed25519 signature of
the canonical JSON of the record without ``sig``. Canonical JSON = sorted keys, no spaces, UTF-8.

Appending takes an exclusive flock, reads the tail, writes one line with O_APPEND, fsyncs, then
rewrites ``ledger.head`` atomically. Two cron jobs appending at once therefore serialise.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import hashlib
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from ..errors import DamagedError, ResilienceError, UsageError
from ..fsutil import atomic_write

FORMAT = 1
GENESIS = "0" * 64
_TAIL_CHUNK = 64 * 1024


def canonical(obj: Any) -> bytes:
    """Canonical JSON bytes: sorted keys, compact separators, UTF-8."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def now_iso() -> str:
    """The current UTC time as ISO 8601 with microseconds and a Z suffix."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def fingerprint(public_key: Ed25519PublicKey) -> str:
    """``SHA256:<base64>`` of the raw public key, the way OpenSSH prints key fingerprints."""
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return "SHA256:" + base64.b64encode(hashlib.sha256(raw).digest()).decode().rstrip("=")


def load_public_key(path: Path) -> Ed25519PublicKey:
    """Read an ed25519 public key in OpenSSH or PEM format; UsageError if it is not one."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise UsageError(f"{path}: cannot read public key: {exc.strerror}") from None
    try:
        if data.startswith(b"ssh-ed25519"):
            key = serialization.load_ssh_public_key(data.strip())
        else:
            key = serialization.load_pem_public_key(data)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        raise UsageError(f"{path}: not an ed25519 public key") from None
    if not isinstance(key, Ed25519PublicKey):
        raise UsageError(f"{path}: not an ed25519 public key")
    return key


@dataclass
class VerifyResult:
    """Outcome of :meth:`Ledger.verify`. ``bad_seq`` is the first bad record's number (0-based
    line index) or None; ``reason`` says what is wrong with it."""

    ok: bool
    records: int = 0
    runs: int = 0
    key: str | None = None
    bad_seq: int | None = None
    reason: str | None = None
    head_seq: int | None = None
    problems: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "records": self.records,
            "runs": self.runs,
            "key": self.key,
            "first_bad_record": self.bad_seq,
            "reason": self.reason,
        }


class Ledger:
    """An evidence ledger in ``directory``. Cheap to construct; files are created on first append."""

    def __init__(self, directory: str | os.PathLike):
        self.dir = Path(directory)
        self.path = self.dir / "ledger.jsonl"
        self.head_path = self.dir / "ledger.head"
        self.lock_path = self.dir / "ledger.lock"
        self.key_path = self.dir / "signing.key"
        self.pub_path = self.dir / "signing.pub"
        self.artifacts_dir = self.dir / "artifacts"
        self._key: Ed25519PrivateKey | None = None

    # -- keys -------------------------------------------------------------------------------

    def _ensure_dir(self) -> None:
        try:
            self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        except OSError as exc:
            raise ResilienceError(f"{self.dir}: cannot create evidence folder: {exc.strerror}") from None

    def private_key(self, create: bool = True) -> Ed25519PrivateKey:
        """Load the signing key, generating it (mode 0600) on first use when ``create``."""
        if self._key is not None:
            return self._key
        if self.key_path.exists():
            try:
                key = serialization.load_pem_private_key(self.key_path.read_bytes(), password=None)
            except (ValueError, TypeError, OSError):
                raise ResilienceError(f"{self.key_path}: unreadable signing key") from None
            if not isinstance(key, Ed25519PrivateKey):
                raise ResilienceError(f"{self.key_path}: not an ed25519 key")
            self._key = key
            return key
        if not create:
            raise UsageError(f"{self.key_path}: no signing key yet (nothing has been recorded)")
        if self.path.exists() and self.path.stat().st_size > 0:
            # A ledger whose key vanished must not silently continue under a new key.
            raise ResilienceError(
                f"{self.key_path}: signing key missing but {self.path} has records; restore the key"
            )
        self._ensure_dir()
        key = Ed25519PrivateKey.generate()
        pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        fd = os.open(self.key_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(pem)
            f.flush()
            os.fsync(f.fileno())
        atomic_write(self.pub_path, self._openssh_public(key.public_key()).encode(), 0o644)
        self._key = key
        return key

    @staticmethod
    def _openssh_public(pub: Ed25519PublicKey) -> str:
        return pub.public_bytes(
            serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
        ).decode() + " resilience-evidence\n"

    def public_key(self) -> Ed25519PublicKey:
        """The ledger's public key (from signing.pub, else derived from signing.key)."""
        if self.pub_path.exists():
            return load_public_key(self.pub_path)
        return self.private_key(create=False).public_key()

    def public_key_openssh(self) -> str:
        """The public key as one OpenSSH line, creating the key pair if there is none yet."""
        if not self.pub_path.exists():
            self.private_key(create=True)
        return self._openssh_public(self.public_key())

    # -- appending --------------------------------------------------------------------------

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        self._ensure_dir()
        fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def _tail(self) -> tuple[int, str, int]:
        """Return (next seq, hash of last line, byte offset where a torn tail starts or -1)."""
        try:
            size = self.path.stat().st_size
        except FileNotFoundError:
            return 0, GENESIS, -1
        if size == 0:
            return 0, GENESIS, -1
        with open(self.path, "rb") as f:
            pos, buf = size, b""
            while pos > 0:
                step = min(_TAIL_CHUNK, pos)
                pos -= step
                f.seek(pos)
                buf = f.read(step) + buf
                if buf.count(b"\n") >= 2 or pos == 0:
                    break
        torn = -1
        if not buf.endswith(b"\n"):
            cut = buf.rfind(b"\n")
            torn = pos + cut + 1
            buf = buf[: cut + 1]
            if cut < 0:
                return 0, GENESIS, torn
        last = buf[:-1].rsplit(b"\n", 1)[-1]
        try:
            seq = int(json.loads(last)["seq"])
        except (ValueError, KeyError, TypeError):
            raise DamagedError(f"{self.path}: last record is not valid; run 'resilience evidence verify'") from None
        return seq + 1, hashlib.sha256(last).hexdigest(), torn

    def _read_head(self) -> dict[str, Any] | None:
        try:
            return json.loads(self.head_path.read_bytes())
        except FileNotFoundError:
            return None
        except (ValueError, OSError):
            return {"invalid": True}

    def append(self, record: dict[str, Any]) -> dict[str, Any]:
        """Append ``record`` (a dict with at least ``type``) and return it as stored, with
        ``v``, ``seq``, ``prev``, ``time``, ``key`` and ``sig`` filled in. Safe across processes."""
        key = self.private_key(create=True)
        with self._locked():
            seq, prev, torn = self._tail()
            if torn >= 0:
                head = self._read_head()
                if head and not head.get("invalid") and int(head.get("seq", -1)) >= seq:
                    raise DamagedError(f"{self.path}: a committed record is torn; run 'resilience evidence verify'")
                # An uncommitted, half-written line from a crashed appender: drop it.
                with open(self.path, "r+b") as f:
                    f.truncate(torn)
            rec = {k: v for k, v in record.items() if k != "sig"}
            rec.update(v=FORMAT, seq=seq, prev=prev, key=fingerprint(key.public_key()))
            rec.setdefault("time", now_iso())
            rec["sig"] = base64.b64encode(key.sign(canonical(rec))).decode()
            line = canonical(rec) + b"\n"
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            try:
                os.write(fd, line)
                os.fsync(fd)
            finally:
                os.close(fd)
            digest = hashlib.sha256(line[:-1]).hexdigest()
            head = {"seq": seq, "hash": digest}
            head["sig"] = base64.b64encode(key.sign(canonical(head))).decode()
            atomic_write(self.head_path, canonical(head) + b"\n", 0o600)
            return rec

    # -- reading ----------------------------------------------------------------------------

    def records(self) -> Iterator[dict[str, Any]]:
        """Yield parsed records in order. Lines that do not parse raise DamagedError."""
        if not self.path.exists():
            return
        with open(self.path, "rb") as f:
            for n, line in enumerate(f):
                try:
                    yield json.loads(line)
                except ValueError:
                    raise DamagedError(f"record {n}: not valid JSON; run 'resilience evidence verify'") from None

    def verify(self, public_key: Ed25519PublicKey | None = None) -> VerifyResult:
        """Check every record's JSON, sequence number, hash link and signature, and that the
        ledger reaches the signed head. Returns the first problem; never raises for damage."""
        if public_key is None:
            if not self.pub_path.exists() and not self.key_path.exists():
                if self.path.exists() or self.head_path.exists():
                    return VerifyResult(False, reason="the ledger's public key is missing (signing.pub)")
                return VerifyResult(True)
            public_key = self.public_key()
        fp = fingerprint(public_key)
        result = VerifyResult(True, key=fp)
        prev = GENESIS
        runs: set[str] = set()
        n = -1
        hashes: list[str] = []

        def bad(seq: int, reason: str) -> VerifyResult:
            result.ok, result.bad_seq, result.reason = False, seq, reason
            result.records = max(n, 0)
            result.runs = len(runs)
            return result

        if self.path.exists():
            with open(self.path, "rb") as f:
                for n, raw in enumerate(f):  # noqa: B007 - n is read by bad()
                    if not raw.endswith(b"\n"):
                        return bad(n, "record is truncated (no end of line)")
                    line = raw[:-1]
                    try:
                        rec = json.loads(line)
                    except ValueError:
                        return bad(n, "not valid JSON")
                    if not isinstance(rec, dict):
                        return bad(n, "not a JSON object")
                    if rec.get("seq") != n:
                        return bad(n, f"sequence number is {rec.get('seq')!r}, expected {n} (record removed or reordered)")
                    if rec.get("prev") != prev:
                        return bad(n, "hash chain broken: 'prev' does not match the previous record")
                    sig = rec.get("sig")
                    body = {k: v for k, v in rec.items() if k != "sig"}
                    try:
                        public_key.verify(base64.b64decode(sig, validate=True), canonical(body))
                    except (InvalidSignature, ValueError, TypeError):
                        return bad(n, "bad signature (record edited or signed by another key)")
                    if rec.get("key") != fp:
                        return bad(n, "signed by a different key than the one verifying")
                    if line != canonical(rec):
                        return bad(n, "record is not in canonical form (edited)")
                    prev = hashlib.sha256(line).hexdigest()
                    hashes.append(prev)
                    if rec.get("run"):
                        runs.add(rec["run"])
        count = len(hashes)
        result.records, result.runs = count, len(runs)
        head = self._read_head()
        if head is None:
            if count:
                return bad(count, "ledger.head is missing")
            return result
        if head.get("invalid"):
            return bad(count, "ledger.head is not valid JSON")
        try:
            public_key.verify(
                base64.b64decode(head.get("sig", ""), validate=True),
                canonical({"seq": head["seq"], "hash": head["hash"]}),
            )
        except (InvalidSignature, ValueError, TypeError, KeyError):
            return bad(count, "ledger.head has a bad signature")
        hseq = head["seq"]
        result.head_seq = hseq
        if not isinstance(hseq, int) or hseq < 0:
            return bad(count, "ledger.head is not valid")
        if hseq >= count:
            return bad(count, f"ledger truncated: the signed head names record {hseq} but only {count} record(s) remain")
        if hashes[hseq] != head["hash"]:
            return bad(hseq, "record does not match the signed head (replaced)")
        return result

    # -- runs -------------------------------------------------------------------------------

    def start_run(self, action: str, params: dict[str, Any] | None = None, *, dry_run: bool = False):
        """Open a run (see :class:`resilience.evidence.run.Run`) and record its start."""
        from .run import Run

        run = Run.start(self, action, params or {}, dry_run=dry_run)
        STARTED_RUNS.append((self, run.id, action, dry_run))
        return run


#: (ledger, run id, action, dry run) of every run this process started, in order: the CLI
#: sends the first one's result to the notification channels when the command ends.
STARTED_RUNS: list[tuple[Ledger, str, str, bool]] = []


