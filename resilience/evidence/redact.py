"""Keep secrets out of anything that is recorded or printed.

:func:`redact` returns a copy of a JSON-like value in which every value under a key that names
a secret is replaced by ``"***"``, and passwords embedded in URLs/DSNs are masked.
"""

from __future__ import annotations

import re
from typing import Any

MASK = "***"
_SECRET_KEY = re.compile(
    # "pass" but not "passed"/"passes"/"passing" (a drill's verdict is no secret).
    r"(pass(word|wd|phrase)?(?!ed|es|ing)|secret|token|private|credential|api[_-]?key|auth(?!or)|cookie|session_key)",
    re.I,
)
# user:password@ in URLs and libpq DSNs; password=... in key/value DSNs.
_URL_PASSWORD = re.compile(r"(?P<pre>[a-z][a-z0-9+.-]*://[^/\s:@]*:)(?P<pw>[^@\s/]+)(?P<post>@)", re.I)
_KV_PASSWORD = re.compile(r"(?P<pre>\b(password|passwd|secret|token)\s*=\s*)(?P<pw>'[^']*'|\S+)", re.I)


def redact_text(text: str) -> str:
    """Mask passwords in URLs (``scheme://user:pw@``) and ``password=...`` pairs in ``text``."""
    text = _URL_PASSWORD.sub(lambda m: m.group("pre") + MASK + m.group("post"), text)
    return _KV_PASSWORD.sub(lambda m: m.group("pre") + MASK, text)


def is_secret_key(key: str) -> bool:
    """True when a mapping key names a secret (password, token, secret key…)."""
    if key.endswith(("_file", "_path")):
        return False
    return bool(_SECRET_KEY.search(key))


def redact(value: Any) -> Any:
    """Return a redacted deep copy of a JSON-like value (dicts, lists, strings, scalars)."""
    if isinstance(value, dict):
        return {
            k: (MASK if isinstance(k, str) and is_secret_key(k) and v not in (None, "") else redact(v))
            for k, v in value.items()
        }
    if isinstance(value, (list, tuple)):
        return [redact(v) for v in value]
    if isinstance(value, str):
        return redact_text(value)
    return value
