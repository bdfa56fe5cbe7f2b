"""The network-namespace test lab: real hosts (web1, web2, db1, lb1, gw1, s3, two ISPs and an
internet) on this machine, addressed in 198.18.0.0/15. See docs/lab.md.

The Python API tests and other features use:

- :func:`up`, :func:`down`, :func:`status` — the lab as a whole;
- :func:`run_in` — run a command inside a host;
- :func:`set_active_line`, :func:`active_line`, :func:`line_state` — gw1's two lines and the
  upstream route that stands in for the DNS/BGP change of a failover;
- :mod:`resilience.lab.faults` — tamper, line-down/up, stop/start a service;
- :mod:`resilience.lab.topology` — the address plan (constants).
"""

from __future__ import annotations

from .hosts import run_in
from .lifecycle import down, leftovers, up
from .routing import active_line, line_state, set_active_line, set_upstream_line
from .status import collect as status

__all__ = ["active_line", "down", "leftovers", "line_state", "run_in", "set_active_line",
           "set_upstream_line", "status", "up"]
