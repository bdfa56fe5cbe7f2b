#!/usr/bin/python3
"""Ansible module: audit the admin accounts of the host it runs on (read only).

An *admin account* has uid 0, or is a member (primary or supplementary) of one of
``admin_groups``. For each one the module reads ``/etc/shadow`` and reports:

- ``state``: ``usable`` (a password hash), ``locked`` (``!``-prefixed hash), ``none`` (``*``,
  ``!``, ``!!``: no password login at all) or ``empty`` (no password: anyone logs in);
- ``last_change`` (days since 1970-01-01, as in shadow) and ``age_days``;
- ``findings``: ``empty`` · ``old`` (older than ``max_age_days``) · ``must-change`` (shadow
  field 0: forced change at next login) · ``no-date`` (aging disabled) · ``weak`` (the hash
  verifies against a word of ``weak``).

Hashes never leave the host: they are verified here, with the system's own ``crypt(3)``
(libxcrypt: yescrypt, sha512, …), and only the verdict is returned. ``weak`` is *not* ``no_log``: it
is a public list, and Ansible would mask every occurrence of its words (``test``, ``admin``)
in the results, user names included. Never changes anything (check-mode safe).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import time

DOCUMENTATION = r"""
module: resilience_accounts
short_description: Admin accounts with old, empty or weak passwords (read only)
options:
  admin_groups: {type: list, elements: str, default: [root, sudo, wheel, admin]}
  weak: {type: list, elements: str, default: []}
  max_age_days: {type: int, default: 60}
  users: {type: list, elements: str, default: []}
"""

_LIB = None


def crypt(word: str, setting: str) -> str | None:
    """crypt(3) of ``word`` with the salt/setting of ``setting`` (an existing hash); None
    when the method is unsupported. libcrypt directly: Python's crypt module is removed in
    3.13."""
    global _LIB
    if _LIB is None:
        _LIB = ctypes.CDLL(ctypes.util.find_library("crypt") or "libcrypt.so.1")
        _LIB.crypt.restype = ctypes.c_char_p
        _LIB.crypt.argtypes = [ctypes.c_char_p, ctypes.c_char_p]
    out = _LIB.crypt(word.encode(), setting.encode())
    if not out or out.startswith(b"*"):
        return None
    return out.decode()


def read_colon_file(path: str) -> list[list[str]]:
    with open(path, encoding="utf-8", errors="surrogateescape") as f:
        return [line.rstrip("\n").split(":") for line in f if line.strip() and not line.startswith("#")]


def admins(passwd: list[list[str]], group: list[list[str]], admin_groups: list[str]) -> dict[str, list[str]]:
    """{user: why it is an admin (``uid 0``, ``group sudo``…)} from passwd and group lines."""
    wanted = set(admin_groups)
    gid_names = {g[2]: g[0] for g in group if len(g) >= 3}
    out: dict[str, list[str]] = {}
    for p in passwd:
        if len(p) < 4:
            continue
        if p[2] == "0":
            out.setdefault(p[0], []).append("uid 0")
        if gid_names.get(p[3]) in wanted:
            out.setdefault(p[0], []).append(f"group {gid_names[p[3]]}")
    for g in group:
        if len(g) >= 4 and g[0] in wanted:
            for member in filter(None, g[3].split(",")):
                why = f"group {g[0]}"
                if why not in out.get(member, []):
                    out.setdefault(member, []).append(why)
    return out


def assess(user: str, shadow: list[str] | None, today: int, max_age_days: int, weak: list[str]) -> dict:
    """The report for one account from its shadow line (None: no shadow entry)."""
    rep = {"user": user, "state": "none", "last_change": None, "age_days": None, "findings": []}
    if shadow is None:
        return rep
    hashed = shadow[1] if len(shadow) > 1 else ""
    if hashed == "":
        rep["state"] = "empty"
        rep["findings"].append("empty")
        return rep
    if hashed.startswith("!") and len(hashed) > 2 and hashed.lstrip("!").startswith("$"):
        rep["state"] = "locked"
    elif not hashed.startswith("$"):
        return rep  # "*", "!", "!!", "x": no password login
    else:
        rep["state"] = "usable"
    field = shadow[2] if len(shadow) > 2 else ""
    if field == "":
        rep["findings"].append("no-date")
    elif field == "0":
        rep["last_change"] = 0
        rep["findings"].append("must-change")
    else:
        rep["last_change"] = int(field)
        rep["age_days"] = today - int(field)
        if rep["age_days"] > max_age_days:
            rep["findings"].append("old")
    if rep["state"] == "usable" and any(crypt(w, hashed) == hashed for w in weak):
        rep["findings"].append("weak")
    return rep


def main() -> None:
    from ansible.module_utils.basic import AnsibleModule

    module = AnsibleModule(argument_spec=dict(
        admin_groups=dict(type="list", elements="str", default=["root", "sudo", "wheel", "admin"]),
        weak=dict(type="list", elements="str", default=[]),
        max_age_days=dict(type="int", default=60),
        users=dict(type="list", elements="str", default=[]),
    ), supports_check_mode=True)
    p = module.params
    try:
        passwd = read_colon_file("/etc/passwd")
        group = read_colon_file("/etc/group")
        shadow = {s[0]: s for s in read_colon_file("/etc/shadow")}
    except OSError as exc:
        module.fail_json(msg=f"cannot read the account files: {exc.strerror}")
    who = admins(passwd, group, p["admin_groups"])
    for extra in p["users"]:
        who.setdefault(extra, ["asked for"])
    today = int(time.time() // 86400)
    accounts = []
    for user in sorted(who):
        rep = assess(user, shadow.get(user), today, p["max_age_days"], p["weak"])
        rep["admin"] = who[user]
        accounts.append(rep)
    module.exit_json(changed=False, today=today, accounts=accounts)


if __name__ == "__main__":
    main()
