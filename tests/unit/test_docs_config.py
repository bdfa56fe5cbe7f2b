"""The configuration reference's sample is a valid config (the reference cannot drift)."""

from __future__ import annotations

import re
from pathlib import Path

from resilience.config import load_config

DOC = Path(__file__).resolve().parents[2] / "docs" / "config.md"


def test_reference_sample_validates(tmp_path):
    block = re.search(r"```yaml\n(.*?)```", DOC.read_text(), re.S).group(1)
    path = tmp_path / "resilience.yml"
    path.write_text(block)
    cfg = load_config(path)
    assert set(cfg.sites) == {"portal"}
    assert cfg.schedule.metrics and cfg.notify.events and cfg.control.ops_addresses
