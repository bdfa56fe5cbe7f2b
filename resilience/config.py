"""Load and validate ``resilience.yml``.

The contract: :func:`load_config` returns a fully validated :class:`Config` whose relative
paths are resolved against the config file's folder, or raises :class:`ConfigError` whose
``problems`` are lines of the form ``file: key: reason``. Nothing here ever lets a YAML,
decoding or validation traceback escape.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    IPvAnyAddress,
    IPvAnyNetwork,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from .errors import ConfigError

CONFIG_ENV = "RESILIENCE_CONFIG"
DEFAULT_CONFIG_NAME = "resilience.yml"
MAX_CONFIG_BYTES = 1 << 20

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")
_BUCKET_RE = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
_DURATION_RE = re.compile(r"^\s*(\d+)\s*([smhdwy])\s*$")
_DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400, "y": 365 * 86400}


def parse_duration(text: str) -> int:
    """Return the number of seconds in a duration such as ``90s``, ``30m``, ``24h``, ``7d``.

    Raises ValueError with a readable reason for anything else.
    """
    total = 0
    rest = str(text).strip()
    if not rest:
        raise ValueError("empty duration")
    for part in re.findall(r"\d+\s*[a-zA-Z]+|\S+", rest):
        m = _DURATION_RE.match(part)
        if not m:
            raise ValueError(f"invalid duration {text!r} (use e.g. 90s, 30m, 24h, 7d, 2w, 1y)")
        total += int(m.group(1)) * _DURATION_UNITS[m.group(2)]
    return total


def _resolve_path(value: str | Path, info: ValidationInfo) -> Path:
    path = Path(os.path.expanduser(str(value)))
    base = (info.context or {}).get("base")
    if not path.is_absolute() and base is not None:
        path = Path(base) / path
    return path


def _check_text(value: str) -> str:
    if "\x00" in value:
        raise ValueError("contains a NUL byte")
    return value


def _path_text(value: Any) -> Any:
    if isinstance(value, str):
        _check_text(value)
        if not value.strip():
            raise ValueError("must not be empty")
    return value


ConfigPath = Annotated[Path, BeforeValidator(_path_text), AfterValidator(_resolve_path)]
Name = Annotated[str, Field(pattern=_NAME_RE.pattern)]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=False, frozen=False)


def _validate_repo_url(value: str, info: ValidationInfo) -> str:
    value = _check_text(value).strip()
    if not value:
        raise ValueError("must not be empty")
    parts = urlsplit(value)
    if parts.scheme == "file":
        value, parts = parts.path, urlsplit(parts.path)
    if parts.scheme == "":
        return str(_resolve_path(value, info))
    if parts.scheme != "s3":
        raise ValueError(
            f"unsupported URL scheme {parts.scheme!r} (use a local path or s3://bucket/prefix)"
        )
    if not parts.netloc:
        raise ValueError("an s3 URL needs a bucket: s3://bucket/prefix")
    if not _BUCKET_RE.match(parts.netloc):
        raise ValueError(f"invalid S3 bucket name {parts.netloc!r}")
    if parts.query or parts.fragment:
        raise ValueError("an s3 URL takes no query or fragment")
    return value


def _validate_endpoint(value: str) -> str:
    value = _check_text(value).strip()
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("must be an http:// or https:// URL with a host")
    try:
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError as exc:
        raise ValueError(f"invalid port: {exc}") from None
    return value.rstrip("/")


RepoURL = Annotated[str, AfterValidator(_validate_repo_url)]
EndpointURL = Annotated[str, AfterValidator(_validate_endpoint)]


class RepositoryCopy(Strict):
    url: RepoURL
    endpoint: EndpointURL | None = None
    region: str | None = None
    access_key_id: str | None = None
    secret_access_key_file: ConfigPath | None = None
    password_file: ConfigPath | None = None


class RepositoryConfig(RepositoryCopy):
    copies: list[RepositoryCopy] = Field(default_factory=list)
    compression: int = Field(default=1, ge=1, le=19)
    pack_size_mib: int = Field(default=16, ge=1, le=128)

    @property
    def is_s3(self) -> bool:
        return self.url.startswith("s3://")


class FilesConfig(Strict):
    hosts: list[Name] = Field(min_length=1)
    path: str
    exclude: list[str] = Field(default_factory=list)

    @field_validator("path")
    @classmethod
    def _absolute(cls, v: str) -> str:
        _check_text(v)
        if not v.startswith("/"):
            raise ValueError("must be an absolute path")
        if v.rstrip("/") == "":
            raise ValueError("refusing to use / as a site path")
        return v.rstrip("/")

    @field_validator("hosts")
    @classmethod
    def _unique(cls, v: list[str]) -> list[str]:
        if len(set(v)) != len(v):
            raise ValueError("lists a host twice")
        return v


class DatabaseConfig(Strict):
    host: Name
    name: Annotated[str, Field(min_length=1, max_length=63)]
    port: int = Field(default=5432, ge=1, le=65535)
    user: str = "resilience_backup"
    password_file: ConfigPath | None = None
    superuser: str = "postgres"
    superuser_password_file: ConfigPath | None = None


class BalancerConfig(Strict):
    host: Name
    backend: Annotated[str, Field(pattern=r"^[A-Za-z0-9_.:-]+$")]
    socket: str = "/run/haproxy/admin.sock"


class CheckConfig(Strict):
    path: str = "/"
    status: int = Field(default=200, ge=100, le=599)
    contains: str | None = None
    sha256: Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")] | None = None

    @field_validator("path")
    @classmethod
    def _starts_with_slash(cls, v: str) -> str:
        if not v.startswith("/"):
            raise ValueError("must start with /")
        return v


class SiteConfig(Strict):
    files: FilesConfig | None = None
    database: DatabaseConfig | None = None
    balancer: BalancerConfig | None = None
    url: EndpointURL | None = None
    checks: list[CheckConfig] = Field(default_factory=lambda: [CheckConfig()])

    @model_validator(mode="after")
    def _something_to_protect(self) -> SiteConfig:
        if self.files is None and self.database is None:
            raise ValueError("a site needs 'files', 'database' or both")
        return self


class RetentionConfig(Strict):
    keep_last: int | None = Field(default=None, ge=0)
    keep_hourly: int | None = Field(default=None, ge=0)
    keep_daily: int | None = Field(default=None, ge=0)
    keep_weekly: int | None = Field(default=None, ge=0)
    keep_monthly: int | None = Field(default=None, ge=0)
    keep_yearly: int | None = Field(default=None, ge=0)
    keep_within: str | None = None

    @field_validator("keep_within")
    @classmethod
    def _duration(cls, v: str | None) -> str | None:
        if v is not None:
            parse_duration(v)
        return v


class SSHConfig(Strict):
    user: str = "root"
    port: int = Field(default=22, ge=1, le=65535)
    identity_file: ConfigPath | None = None
    known_hosts: ConfigPath | None = None
    connect_timeout: float = Field(default=5.0, gt=0, le=300)


class EvidenceConfig(Strict):
    dir: ConfigPath | None = None


class ControlConfig(Strict):
    """Where the control plane acts from, and what it must never cut off.

    ``ops_addresses`` are the ops host's addresses as the managed hosts see them: a quarantined
    host still accepts SSH from them, and no block may cover them. ``protected`` networks
    (management, monitoring) can never be blocked either.
    """

    ops_addresses: list[IPvAnyAddress] = Field(default_factory=list)
    protected: list[IPvAnyNetwork] = Field(default_factory=list)
    playbooks: ConfigPath | None = None


def _seconds(value: Any) -> float:
    """A number of seconds, or a duration text such as ``90s``/``5m`` (see parse_duration)."""
    if isinstance(value, bool):
        raise ValueError("must be a number of seconds or a duration such as 30s")
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return float(parse_duration(value))
    raise ValueError("must be a number of seconds or a duration such as 30s")


Seconds = Annotated[float, BeforeValidator(_seconds), Field(ge=0)]


def _argv(value: Any) -> Any:
    if isinstance(value, list) and (
            not value or not all(isinstance(a, str) and a and "\x00" not in a for a in value)):
        raise ValueError("must be a non-empty list of non-empty strings (an argv, no shell)")
    return value


Argv = Annotated[list[str], BeforeValidator(_argv)]


class LinesConfig(Strict):
    """Line failover policy (issue 5). The gateway's lines (interface, address, ISP gateway)
    and its probe targets are read from the gateway's inventory variables ``lines`` and
    ``probe_targets``: the inventory is their one source of truth, since the switch playbook
    reads them too. This section only says how to probe, decide and switch."""

    gateway: Name
    primary: Name = "primary"
    interval: float = Field(default=1.0, gt=0, le=60)
    timeout: float | None = Field(default=None, gt=0, le=60)
    down_after: int = Field(default=3, ge=1, le=1000)
    up_after: int = Field(default=5, ge=1, le=1000)
    reliability: int = Field(default=1, ge=1, le=100)
    failback_hold: Seconds = 60.0
    auto_failback: bool = True
    playbook: str = "line_switch.yml"
    switch_with: Literal["runner", "ansible-playbook"] = "runner"
    arm: bool = True
    upstream_command: Argv | None = None
    upstream_status_command: Argv | None = None
    hook_timeout: float = Field(default=30.0, gt=0, le=3600)

    @property
    def probe_timeout(self) -> float:
        """Seconds a probe waits for its answer (default: the interval)."""
        return self.timeout if self.timeout is not None else self.interval


def _webhook_url(value: str) -> str:
    value = _check_text(value).strip()
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("must be an http:// or https:// URL with a host")
    return value


class WebhookConfig(Strict):
    """A webhook (docs/monitoring.md): ``json`` (the event as is), ``wecom`` (企业微信 group
    robot) or ``dingtalk`` (钉钉 robot; ``secret_file`` holds its signing secret, if set)."""

    url: Annotated[str, AfterValidator(_webhook_url)]
    format: Literal["json", "wecom", "dingtalk"] = "json"
    timeout: float = Field(default=5.0, gt=0, le=120)
    secret_file: ConfigPath | None = None

    @model_validator(mode="after")
    def _secret_for_dingtalk(self) -> WebhookConfig:
        if self.secret_file is not None and self.format != "dingtalk":
            raise ValueError("secret_file is only used with format: dingtalk")
        return self


class EmailConfig(Strict):
    """E-mail by SMTP (docs/monitoring.md): STARTTLS on by default; ``user`` logs in with the
    password read from ``password_file`` (never from the config itself)."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    host: str
    port: int = Field(default=587, ge=1, le=65535)
    starttls: bool = True
    sender: str = Field(alias="from", pattern=r"^[^@\s]+@[^@\s]+$")
    to: list[Annotated[str, Field(pattern=r"^[^@\s]+@[^@\s]+$")]] = Field(min_length=1)
    user: str | None = None
    password_file: ConfigPath | None = None
    timeout: float = Field(default=10.0, gt=0, le=120)

    @model_validator(mode="after")
    def _login_pair(self) -> EmailConfig:
        if (self.user is None) != (self.password_file is None):
            raise ValueError("user and password_file go together")
        return self


class NotifyConfig(Strict):
    """Where alarms go: webhooks (POST), commands (the JSON event on stdin) and e-mail.
    ``events`` selects which run results :func:`resilience.notify.on_result` sends."""

    webhooks: list[WebhookConfig] = Field(default_factory=list)
    commands: list[Argv] = Field(default_factory=list)
    email: list[EmailConfig] = Field(default_factory=list)
    events: list[Literal["failure", "incident", "drill"]] = Field(
        default_factory=lambda: ["failure", "incident", "drill"])


class MetricsConfig(Strict):
    """Prometheus textfile metrics (docs/monitoring.md): the node_exporter textfile folder."""

    dir: ConfigPath | None = None


class PublishConfig(Strict):
    """``resilience publish`` (docs/publish.md): how many distinct reviewers a publish needs."""

    reviewers_required: int = Field(default=3, ge=1, le=20)


class CredentialsConfig(Strict):
    """``resilience creds`` (docs/credentials.md): the password policy and where rotated
    passwords are kept. ``password_file`` is the key for the stored copies (default: the
    repository password); ``allowed_users`` (glob patterns) limits which accounts rotate may
    change (empty: any)."""

    max_age: Seconds = 60 * 86400.0
    admin_groups: list[str] = Field(default_factory=lambda: ["root", "sudo", "wheel", "admin"])
    weak_list: ConfigPath | None = None
    password_file: ConfigPath | None = None
    dir: ConfigPath | None = None
    allowed_users: list[str] = Field(default_factory=list)
    length: int = Field(default=24, ge=16, le=128)


class ServiceCommands(Strict):
    """How a runbook checks and restarts one service on a host (shell command lines)."""

    check: str
    restart: str


def _default_services() -> dict[str, ServiceCommands]:
    return {"nginx": ServiceCommands(check="systemctl is-active --quiet nginx",
                                     restart="systemctl restart nginx"),
            "postgresql": ServiceCommands(check="systemctl is-active --quiet postgresql",
                                          restart="systemctl restart postgresql")}


class RunbooksConfig(Strict):
    """Incident runbooks (docs/runbooks.md): security updates mode (``off``, ``check`` =
    list pending ones with a simulation only, ``apply``), the admin accounts whose passwords
    a tamper rotates, the service commands, the access-log window analysed, where reports go
    (default: the evidence folder's ``reports/``), how long ``network`` waits for a repair."""

    security_updates: Literal["off", "check", "apply"] = "apply"
    admin_users: list[str] = Field(default_factory=lambda: ["root"])
    services: dict[str, ServiceCommands] = Field(default_factory=_default_services)
    log_window: str = "1h"
    report_dir: ConfigPath | None = None
    repair_wait: Seconds = 600.0


class WatchConfig(Strict):
    """``resilience watch`` (docs/watch.md): seconds between full rounds (comparison of every
    member with the latest snapshot, pages, availability), the HTTP timeout of the
    availability checks, and how long a burst of file events settles before it is confirmed."""

    interval: Seconds = 60.0
    timeout: float = Field(default=5.0, gt=0, le=120)
    settle: float = Field(default=0.1, ge=0, le=10)


def _cron(value: Any) -> str:
    from .schedule import validate_cron  # croniter is imported only when a schedule is set

    return validate_cron(value)


CronExpr = Annotated[str, BeforeValidator(_cron)]


def _percent(value: Any) -> str:
    text = str(value).strip()
    m = re.fullmatch(r"(\d+(?:\.\d+)?)%", text)
    if not m or not 0 < float(m.group(1)) <= 100:
        raise ValueError("must be a percentage such as 10%")
    return text


class ScheduleConfig(Strict):
    """``resilience schedule`` (docs/schedule.md): cron expressions of the ops host's jobs
    (null: no such job), drill plans (path, relative to this file) -> cron expression, where
    logs and flock files go, the user the jobs run as, and the managed cron file."""

    backup: CronExpr | None = "15 1 * * *"
    verify: CronExpr | None = "30 3 * * 0"
    verify_subset: Annotated[str, BeforeValidator(_percent)] = "10%"
    prune: CronExpr | None = "45 4 * * 0"
    metrics: CronExpr | None = "*/5 * * * *"
    drills: dict[ConfigPath, CronExpr] = Field(default_factory=dict)
    log_dir: ConfigPath = Path("/var/log/resilience")
    lock_dir: ConfigPath = Path("/run/lock")
    user: Annotated[str, Field(pattern=r"^[a-z_][a-z0-9_.-]{0,31}$")] = "root"
    cron_file: ConfigPath = Path("/etc/cron.d/resilience")


class StatusConfig(Strict):
    """``resilience status`` (docs/schedule.md): the ages beyond which a site needs attention
    (null: not checked) and how long the remote reads (balancer, members, line) may take."""

    max_backup_age: Seconds | None = 26 * 3600.0
    max_verify_age: Seconds | None = 8 * 86400.0
    max_drill_age: Seconds | None = 100 * 86400.0
    timeout: float = Field(default=8.0, gt=0, le=120)


class Config(Strict):
    version: Literal[1] = 1
    repository: RepositoryConfig | None = None
    inventory: ConfigPath | None = None
    ssh: SSHConfig = Field(default_factory=SSHConfig)
    evidence: EvidenceConfig = Field(default_factory=EvidenceConfig)
    control: ControlConfig = Field(default_factory=ControlConfig)
    lines: LinesConfig | None = None
    notify: NotifyConfig = Field(default_factory=NotifyConfig)
    metrics: MetricsConfig = Field(default_factory=MetricsConfig)
    watch: WatchConfig = Field(default_factory=WatchConfig)
    sites: dict[Name, SiteConfig] = Field(default_factory=dict)
    retention: RetentionConfig = Field(default_factory=RetentionConfig)
    runbooks: RunbooksConfig = Field(default_factory=RunbooksConfig)
    publish: PublishConfig = Field(default_factory=PublishConfig)
    credentials: CredentialsConfig = Field(default_factory=CredentialsConfig)
    schedule: ScheduleConfig = Field(default_factory=ScheduleConfig)
    status: StatusConfig = Field(default_factory=StatusConfig)

    # Set by load_config, not by the file.
    source: Path | None = Field(default=None, exclude=True)

    @model_validator(mode="after")
    def _inventory_when_remote(self) -> Config:
        remote = [h for s in self.sites.values() if s.files for h in s.files.hosts if h != "localhost"]
        remote += [s.database.host for s in self.sites.values() if s.database]
        if remote and self.inventory is None:
            raise ValueError(
                f"sites name remote hosts ({', '.join(sorted(set(remote)))}) but no 'inventory' is set"
            )
        return self

    def site(self, name: str) -> SiteConfig:
        """Return the named site or raise a usage error that lists the known sites."""
        from .errors import UsageError

        if name not in self.sites:
            known = ", ".join(sorted(self.sites)) or "none configured"
            raise UsageError(f"unknown site {name!r} (known: {known})")
        return self.sites[name]


def find_config_path(explicit: str | os.PathLike | None) -> Path:
    """Return the config path: the explicit one, else ``$RESILIENCE_CONFIG``, else ./resilience.yml."""
    if explicit:
        return Path(explicit)
    env = os.environ.get(CONFIG_ENV)
    if env:
        return Path(env)
    return Path.cwd() / DEFAULT_CONFIG_NAME


def _loc(loc: tuple[Any, ...]) -> str:
    parts = [str(p) for p in loc if not (isinstance(p, str) and p.startswith("function-"))]
    # Pydantic adds the union member name (e.g. "str") to the location; it means nothing to a user.
    parts = [p for p in parts if p not in ("str", "int", "float", "bool", "list[str]", "RepositoryCopy")]
    return ".".join(parts) or "(top level)"


_FRIENDLY = {
    "extra_forbidden": "unknown key",
    "missing": "required key is missing",
    "string_type": "must be a string",
    "int_type": "must be an integer",
    "int_parsing": "must be an integer",
    "float_parsing": "must be a number",
    "float_type": "must be a number",
    "bool_parsing": "must be true or false",
    "list_type": "must be a list",
    "dict_type": "must be a mapping",
    "model_type": "must be a mapping",
    "literal_error": "unsupported value",
}


def _reason(err: dict[str, Any]) -> str:
    kind = err.get("type", "")
    ctx = err.get("ctx", {})
    bounds = {
        "less_than_equal": "must be at most {le}",
        "less_than": "must be less than {lt}",
        "greater_than_equal": "must be at least {ge}",
        "greater_than": "must be greater than {gt}",
        "too_short": "needs at least {min_length} item(s)",
        "too_long": "allows at most {max_length} item(s)",
        "string_too_short": "must not be empty",
        "string_too_long": "is too long (at most {max_length} characters)",
    }
    if kind in bounds:
        try:
            return bounds[kind].format(**ctx)
        except (KeyError, IndexError):
            pass
    if kind in _FRIENDLY:
        reason = _FRIENDLY[kind]
        if kind == "literal_error":
            reason += f" (expected {err.get('ctx', {}).get('expected', '?')})"
        return reason
    msg = str(err.get("msg", "invalid value"))
    for prefix in ("Value error, ", "Assertion failed, "):
        if msg.startswith(prefix):
            msg = msg[len(prefix):]
    if kind == "string_pattern_mismatch":
        msg = "invalid name (letters, digits, '.', '_', '-'; must start with a letter or digit)"
    return msg


def _read_text(path: Path) -> str:
    try:
        if path.is_dir():
            raise ConfigError([f"{path}: is a directory, not a config file"])
        with open(path, "rb") as f:
            raw = f.read(MAX_CONFIG_BYTES + 1)
    except FileNotFoundError:
        raise ConfigError([f"{path}: file not found"]) from None
    except PermissionError:
        raise ConfigError([f"{path}: permission denied"]) from None
    except OSError as exc:
        raise ConfigError([f"{path}: cannot read: {exc.strerror}"]) from None
    if len(raw) > MAX_CONFIG_BYTES:
        raise ConfigError([f"{path}: too large for a config file (over 1 MiB)"])
    if b"\x00" in raw:
        raise ConfigError([f"{path}: not a text file (contains NUL bytes)"])
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ConfigError([f"{path}: not UTF-8 text (bad byte at offset {exc.start})"]) from None


class _UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate keys, which YAML silently lets the last one win."""


def _construct_mapping(loader: _UniqueKeyLoader, node: yaml.MappingNode, deep: bool = False):
    seen: set[Any] = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        try:
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r}", key_node.start_mark
                )
        except TypeError:
            raise yaml.constructor.ConstructorError(
                None, None, "a key must be a plain value", key_node.start_mark
            ) from None
        seen.add(key)
    return loader.construct_mapping(node, deep=deep)


_UniqueKeyLoader.add_constructor(
    yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping
)


def parse_yaml(path: Path) -> Any:
    """Parse a YAML file into plain data, or raise ConfigError naming the line of the problem."""
    text = _read_text(path)
    if not text.strip():
        raise ConfigError([f"{path}: file is empty"])
    try:
        return yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 - SafeLoader subclass
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"line {mark.line + 1}" if mark else "(unknown position)"
        what = exc.problem or exc.context or "malformed YAML"
        raise ConfigError([f"{path}: {where}: malformed YAML: {what}"]) from None
    except yaml.YAMLError as exc:
        raise ConfigError([f"{path}: (top level): malformed YAML: {exc}"]) from None
    except RecursionError:
        raise ConfigError([f"{path}: (top level): YAML nested too deeply"]) from None


def validate_config(data: Any, path: Path) -> Config:
    """Validate already-parsed data as a config read from ``path``."""
    if data is None:
        raise ConfigError([f"{path}: file is empty"])
    if not isinstance(data, dict):
        raise ConfigError([f"{path}: (top level): must be a mapping of keys, not {type(data).__name__}"])
    bad_keys = [k for k in data if not isinstance(k, str)]
    if bad_keys:
        raise ConfigError([f"{path}: {bad_keys[0]!r}: keys must be strings"])
    try:
        cfg = Config.model_validate(data, context={"base": path.resolve().parent})
    except ValidationError as exc:
        problems = [f"{path}: {_loc(e['loc'])}: {_reason(e)}" for e in exc.errors()]
        raise ConfigError(problems) from None
    except RecursionError:
        raise ConfigError([f"{path}: (top level): nested too deeply"]) from None
    cfg.source = path.resolve()
    return cfg


def load_config(explicit: str | os.PathLike | None = None) -> Config:
    """Find, parse and validate the config. Raises ConfigError on any problem."""
    path = find_config_path(explicit)
    return validate_config(parse_yaml(path), path)


def embedded_default(base: Path) -> Config:
    """The config used by ``make demo``: a local site and a local repository under ``base``."""
    data = {
        "repository": {"url": str(base / "repo"), "password_file": str(base / "repo.pass")},
        "evidence": {"dir": str(base / "evidence")},
        "sites": {"portal": {"files": {"hosts": ["localhost"], "path": str(base / "site")}}},
        "retention": {"keep_daily": 7, "keep_weekly": 4, "keep_monthly": 12},
    }
    cfg = Config.model_validate(data, context={"base": base})
    cfg.source = base / DEFAULT_CONFIG_NAME
    return cfg
