"""Glob patterns for excludes and restore includes, on byte-string paths.

Rules (the same for ``files.exclude`` and ``restore --include``):
- a pattern without ``/`` matches a name at any depth (``*.tmp``, ``cache``);
- a pattern with ``/`` is anchored at the site root (``cache/**``, ``/uploads/tmp``);
- ``*`` matches within one name, ``**`` any number of whole names (also none), ``?`` one
  character, ``[abc]`` a class; a trailing ``/`` matches folders only.
Matching a folder matches everything below it.
"""

from __future__ import annotations

import re
from functools import lru_cache


def _translate(pat: str) -> str:
    out, i, n = [], 0, len(pat)
    while i < n:
        c = pat[i]
        if c == "*":
            if pat[i:i + 2] == "**":
                # "**/" = any number of leading folders; a final "**" = anything below.
                if pat[i + 2:i + 3] == "/":
                    out.append("(?:.*/)?")
                    i += 3
                else:
                    out.append(".*")
                    i += 2
                continue
            out.append("[^/]*")
        elif c == "?":
            out.append("[^/]")
        elif c == "[":
            j = pat.find("]", i + 2 if pat[i + 1:i + 2] in ("!", "]") else i + 1)
            if j < 0:
                out.append(re.escape(c))
            else:
                body = pat[i + 1:j]
                if body.startswith("!"):
                    body = "^" + body[1:]
                out.append("[" + body.replace("\\", "\\\\") + "]")
                i = j
        else:
            out.append(re.escape(c))
        i += 1
    return "".join(out)


@lru_cache(maxsize=256)
def _compile(pattern: str) -> tuple[re.Pattern[str], bool]:
    dir_only = pattern.endswith("/") and pattern.strip("/") != ""
    pat = pattern.rstrip("/") if dir_only else pattern
    if "/" in pat:
        rx = "^" + _translate(pat.lstrip("/")) + "$"
    else:
        rx = "^(?:.*/)?" + _translate(pat) + "$"
    return re.compile(rx, re.S), dir_only


class Matcher:
    """A set of patterns; :meth:`match` tells whether a relative path (or a folder above it)
    matches any of them."""

    def __init__(self, patterns: list[str] | tuple[str, ...]):
        self.patterns = [p for p in patterns if p and p.strip()]
        for p in self.patterns:
            if "\x00" in p:
                raise ValueError(f"pattern {p!r} contains a NUL byte")
        self._compiled = [_compile(p) for p in self.patterns]

    def __bool__(self) -> bool:
        return bool(self._compiled)

    def match_exact(self, path: bytes, is_dir: bool) -> bool:
        """True when ``path`` itself matches (ignoring its parent folders)."""
        text = path.decode("utf-8", "surrogateescape")
        return any(rx.match(text) and (is_dir or not dir_only) for rx, dir_only in self._compiled)

    def match(self, path: bytes, is_dir: bool) -> bool:
        """True when ``path`` or any folder above it matches."""
        parts = path.split(b"/")
        for i in range(1, len(parts)):
            if self.match_exact(b"/".join(parts[:i]), True):
                return True
        return self.match_exact(path, is_dir)

    def could_match_below(self, folder: bytes) -> bool:
        """True when some path inside ``folder`` might match (used to prune include walks)."""
        text = folder.decode("utf-8", "surrogateescape")
        for p in self.patterns:
            anchored = p.strip("/")
            if "/" not in p.rstrip("/") or "**" in anchored:
                return True
            head = anchored.split("/")
            parts = text.split("/")
            if all(_compile(h)[0].match(x) for h, x in zip(head, parts, strict=False)):
                return True
        return False
