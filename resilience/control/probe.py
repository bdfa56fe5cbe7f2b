"""Probe each line of the gateway separately, from the gateway itself, as a stream of rounds.

One SSH session to the gateway runs a small POSIX sh loop (only ``sh``, ``ping``, ``sed``
and ``sleep`` on the host). Every round it pings every probe target once from every line's
own address (``ping -I ADDRESS``): the gateway's policy routing sends traffic sourced from a
line's address out by that line, so the standby line is tested while the primary carries the
traffic, and a dead primary shows up as a bad round even though the default route still
points at it. Rounds start every ``interval`` seconds (a round with lost probes lasts
``timeout``). The loop prints one line per probe and one per finished round, so the watcher
on the ops host sees each round as soon as it ends, rather than polling.

Output of the loop, one line each::

    p ROUND LINE TARGET RTT_MS|-      # one probe ('-' = no answer within the timeout)
    r ROUND                           # the round is complete
"""

from __future__ import annotations

import contextlib
import ipaddress
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

from ..config import Config, LinesConfig
from ..errors import ResilienceError, UsageError
from ..inventory import load_inventory
from .ssh import SSH, Target, quote, target_for

# $1 timeout, $2 interval, $3 rounds (0 = forever), then NAME=ADDRESS... -- TARGET...
PROBE_SCRIPT = r"""
T=$1; I=$2; R=$3; shift 3
specs=""
while [ "$#" -gt 0 ] && [ "$1" != "--" ]; do specs="$specs $1"; shift; done
shift
n=0
while [ "$R" -eq 0 ] || [ "$n" -lt "$R" ]; do
  n=$((n+1))
  sleep "$I" &
  for spec in $specs; do
    for t in "$@"; do
      ( r=$(ping -n -q -c1 -W "$T" -I "${spec#*=}" "$t" 2>/dev/null |
            sed -n 's|^rtt[^=]*= [0-9.]*/\([0-9.]*\)/.*|\1|p')
        echo "p $n ${spec%%=*} $t ${r:--}" ) &
    done
  done
  wait
  echo "r $n"
done
"""


@dataclass(frozen=True)
class LineSpec:
    """One line of the gateway, from the inventory."""

    name: str
    interface: str
    address: str
    gateway: str


@dataclass(frozen=True)
class Gateway:
    """The gateway host, its lines (in preference order: the primary first) and targets."""

    host: str
    lines: dict[str, LineSpec]
    targets: tuple[str, ...]

    @property
    def order(self) -> tuple[str, ...]:
        return tuple(self.lines)

    def line_by_gateway(self, next_hop: str | None) -> str | None:
        """The line whose ISP gateway is ``next_hop`` (None if none is)."""
        return next((ln.name for ln in self.lines.values() if ln.gateway == next_hop), None)


def _address(value, where: str) -> str:
    try:
        return str(ipaddress.ip_address(str(value)))
    except ValueError:
        raise UsageError(f"{where}: not an IP address: {value!r}") from None


def gateway_from_inventory(cfg: Config) -> Gateway:
    """Read the gateway's ``lines`` and ``probe_targets`` from the inventory (their one
    source of truth). UsageError when the config has no ``lines`` section, the gateway is not
    in the inventory, or its variables are missing or malformed."""
    lc = lines_config(cfg)
    if cfg.inventory is None:
        raise UsageError(f"{cfg.source}: inventory: needed for lines.gateway {lc.gateway!r}")
    hv = load_inventory(cfg.inventory).host(lc.gateway)
    where = f"{cfg.inventory}: {lc.gateway}"
    raw = hv.get("lines")
    if not isinstance(raw, dict) or len(raw) < 2:
        raise UsageError(f"{where}: needs a 'lines' mapping with at least two lines")
    if lc.primary not in raw:
        raise UsageError(f"{cfg.source}: lines.primary: {lc.primary!r} is not a line of "
                         f"{lc.gateway} (has: {', '.join(raw)})")
    specs = {}
    for name in [lc.primary, *sorted(n for n in raw if n != lc.primary)]:
        v = raw[name]
        if not isinstance(v, dict) or not all(k in v for k in ("interface", "address", "gateway")):
            raise UsageError(f"{where}: lines.{name}: needs interface, address and gateway")
        specs[name] = LineSpec(str(name), str(v["interface"]),
                               _address(v["address"], f"{where}: lines.{name}.address"),
                               _address(v["gateway"], f"{where}: lines.{name}.gateway"))
    targets = hv.get("probe_targets")
    if not isinstance(targets, list) or not targets:
        raise UsageError(f"{where}: needs 'probe_targets' (a list of addresses)")
    return Gateway(lc.gateway, specs,
                   tuple(_address(t, f"{where}: probe_targets") for t in targets))


def lines_config(cfg: Config) -> LinesConfig:
    """The config's ``lines`` section, or a UsageError saying it is missing."""
    if cfg.lines is None:
        raise UsageError(f"{cfg.source}: lines: not configured (see docs/lines.md)")
    return cfg.lines


def probe_command(gw: Gateway, *, interval: float, timeout: float, rounds: int = 0) -> str:
    """The remote command line of the probe loop (for ``rounds`` rounds, 0 = forever)."""
    specs = [f"{ln.name}={ln.address}" for ln in gw.lines.values()]
    args = [f"{timeout:g}", f"{interval:g}", str(rounds), *specs, "--", *gw.targets]
    return "sh -c " + quote(PROBE_SCRIPT) + " probe " + " ".join(quote(a) for a in args)


@dataclass
class LineRound:
    """What one line did in one round."""

    answered: int = 0
    total: int = 0
    rtts: list[float] = field(default_factory=list)
    answered_by: list[str] = field(default_factory=list)

    def good(self, reliability: int) -> bool:
        """A round is good when at least ``reliability`` targets answered (all of them if
        there are fewer targets than that)."""
        return self.total > 0 and self.answered >= min(reliability, self.total)

    def as_dict(self) -> dict:
        loss = 0.0 if not self.total else round(100.0 * (self.total - self.answered) / self.total, 1)
        rtt = round(sum(self.rtts) / len(self.rtts), 3) if self.rtts else None
        return {"answered": self.answered, "sent": self.total, "loss_pct": loss, "rtt_ms": rtt,
                "targets_answered": sorted(self.answered_by)}


@dataclass
class Round:
    seq: int
    at: float  # time.monotonic() when the round was complete on the ops host
    lines: dict[str, LineRound]

    def results(self, reliability: int) -> dict[str, bool]:
        return {n: lr.good(reliability) for n, lr in self.lines.items()}


class RoundParser:
    """Turns the loop's output lines into :class:`Round` objects (pure; unit-tested)."""

    def __init__(self, order: tuple[str, ...]):
        self.order = order
        self.pending: dict[int, dict[str, LineRound]] = {}

    def feed(self, text: str, now: float) -> Round | None:
        """Feed one output line; return the Round it completes, if any. Junk is ignored."""
        parts = text.split()
        if len(parts) == 5 and parts[0] == "p" and parts[1].isdigit() and parts[2] in self.order:
            lines = self.pending.setdefault(int(parts[1]), {n: LineRound() for n in self.order})
            lr = lines[parts[2]]
            lr.total += 1
            if parts[4] != "-":
                try:
                    lr.rtts.append(float(parts[4]))
                except ValueError:
                    return None
                lr.answered += 1
                lr.answered_by.append(parts[3])
        elif len(parts) == 2 and parts[0] == "r" and parts[1].isdigit():
            seq = int(parts[1])
            lines = self.pending.pop(seq, {n: LineRound() for n in self.order})
            return Round(seq, now, lines)
        return None


class ProbeStream:
    """The probe loop running on the gateway; iterate for rounds. Use as a context manager
    (the remote loop ends when the session closes)."""

    def __init__(self, ssh: SSH, target: Target, gw: Gateway, *, interval: float,
                 timeout: float, rounds: int = 0):
        self.ssh, self.target, self.gw = ssh, target, gw
        self.command = probe_command(gw, interval=interval, timeout=timeout, rounds=rounds)
        self.proc: subprocess.Popen | None = None

    def __enter__(self) -> ProbeStream:
        self.proc = self.ssh.popen(self.target, self.command, stdin=subprocess.DEVNULL,
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                   text=True, bufsize=1)
        return self

    def __iter__(self) -> Iterator[Round]:
        assert self.proc is not None and self.proc.stdout is not None
        parser = RoundParser(self.gw.order)
        for text in self.proc.stdout:
            rnd = parser.feed(text, time.monotonic())
            if rnd is not None:
                yield rnd
        code = self.proc.wait()
        if code != 0:
            err = self.proc.stderr.read() if self.proc.stderr else ""
            from .ssh import raise_for

            raise_for(self.target, code, err.encode())

    def __exit__(self, *exc) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=3)
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()
        if self.proc is not None:
            for f in (self.proc.stdout, self.proc.stderr):
                if f:
                    f.close()


def probe_rounds(ssh: SSH, cfg: Config, gw: Gateway, rounds: int = 1) -> list[Round]:
    """Run ``rounds`` probe rounds now and return them (for status and ``watch --once``)."""
    lc = lines_config(cfg)
    target = target_for(cfg, gw.host)
    with ProbeStream(ssh, target, gw, interval=lc.interval, timeout=lc.probe_timeout,
                     rounds=rounds) as stream:
        got = list(stream)
    if len(got) < rounds:
        raise ResilienceError(f"{gw.host}: the probe loop ended after {len(got)} of {rounds} rounds")
    return got
