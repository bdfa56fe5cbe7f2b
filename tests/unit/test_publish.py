"""Pure parts of `resilience publish`: reviewers, the fitness of a tree, the checks."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from resilience.actions import publish as pub
from resilience.config import CheckConfig
from resilience.errors import UsageError

REPO = Path(__file__).resolve().parents[2]


def test_reviewers_are_counted_once_whatever_the_case_or_spacing():
    assert pub.distinct_reviewers(["Li Wei", " li  wei ", "LI WEI", "Zhang", "", "  ", "zhang"]) == ["Li Wei", "Zhang"]
    pub.require_reviewers(["a", "b", "c"], 3)
    with pytest.raises(UsageError, match="needs 3 distinct reviewers, got 2 \\(a, b\\)"):
        pub.require_reviewers(["a", "b"], 3)
    with pytest.raises(UsageError, match="got 0:"):
        pub.require_reviewers([], 3)


def _tree(root: Path) -> Path:
    (root / "news").mkdir(parents=True)
    (root / "index.html").write_text("<h1>home</h1>")
    (root / "news" / "a.html").write_text("a")
    os.chmod(root, 0o755)
    os.chmod(root / "news", 0o755)
    for f in (root / "index.html", root / "news" / "a.html"):
        os.chmod(f, 0o644)
    return root


def test_a_normal_tree_is_fit(tmp_path):
    root = _tree(tmp_path / "site")
    os.symlink("news/a.html", root / "latest.html")
    assert pub.lint_tree(root) == []


@pytest.mark.parametrize("spoil, problem", [
    (lambda r: os.chmod(r / "news" / "a.html", 0o600), "not readable by the web server"),
    (lambda r: os.chmod(r / "news", 0o750), "not readable by the web server"),
    (lambda r: os.chmod(r / "index.html", 0o666), "world-writable"),
    (lambda r: os.chmod(r / "index.html", 0o4755), "setuid"),
    (lambda r: os.symlink("/etc/shadow", r / "s.html"), "symlink leaves the site"),
    (lambda r: os.symlink("../../x", r / "news" / "up.html"), "symlink leaves the site"),
    (lambda r: os.mkfifo(r / "pipe"), "not a file, folder or symlink"),
])
def test_unfit_trees_are_refused(tmp_path, spoil, problem):
    root = _tree(tmp_path / "site")
    spoil(root)
    problems = pub.lint_tree(root)
    assert problems and problem in problems[0]


def test_empty_missing_and_excluded(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir(mode=0o755)
    assert "empty" in pub.lint_tree(empty)[0]
    assert pub.lint_tree(tmp_path / "nope")
    root = _tree(tmp_path / "site")
    (root / "cache").mkdir(mode=0o700)  # excluded like the site's cache/**: not checked
    assert pub.lint_tree(root, ["cache/**", "cache"]) == []


def test_page_file_maps_urls_to_tree_files():
    assert pub.page_file("/") == "index.html"
    assert pub.page_file("/news/") == "news/index.html"
    assert pub.page_file("/news/a.html?x=1") == "news/a.html"
    assert pub.page_file("/healthz") == "healthz"


def test_publish_checks_take_digests_from_the_new_tree():
    checks = [CheckConfig(path="/healthz", contains="ok"), CheckConfig(path="/", contains="Portal", sha256="0" * 64)]
    digests = {"index.html": "1" * 64, "news/a.html": "2" * 64, "css/x.css": "3" * 64}
    out = pub.publish_checks(checks, digests, ["css/x.css", "index.html", "news/a.html", "gone.html"])
    assert [(c.path, c.sha256, c.contains) for c in out] == [
        ("/healthz", None, "ok"), ("/", "1" * 64, "Portal"), ("/news/a.html", "2" * 64, None)]
    many = {f"n/{i}.html": f"{i:064d}" for i in range(30)}
    assert len(pub.publish_checks([], many, sorted(many))) == 1 + pub.MAX_PAGE_CHECKS


def test_local_items_hash_files_and_list_parents_first(tmp_path):
    root = _tree(tmp_path / "site")
    items = pub.local_items(root, [])
    paths = [p for p, _ in items]
    assert paths.index(b"news") < paths.index(b"news/a.html")
    node = dict(items)[b"news/a.html"]
    assert node["sha256"] == "ca978112ca1bbdcafac231b39a23dc4da786eff8147c4e72b9807785afee48bb"


def test_cli_refuses_too_few_reviewers_before_touching_anything(tmp_path):
    root = _tree(tmp_path / "site")
    cfg = tmp_path / "resilience.yml"
    cfg.write_text(f"repository: {{url: {tmp_path / 'repo'}}}\ninventory: {REPO / 'inventories/lab/hosts.yml'}\n"
                   f"evidence: {{dir: {tmp_path / 'evidence'}}}\n"
                   "sites:\n  portal:\n    files: {hosts: [web1, web2], path: /var/www/portal}\n")
    env = dict(os.environ, RESILIENCE_PASSWORD="pw", RESILIENCE_STATE_DIR=str(tmp_path / "state"))
    r = subprocess.run([sys.executable, "-m", "resilience", "--config", str(cfg), "publish", "--site", "portal",
                        "--from", str(root), "--reviewer", "a", "--reviewer", " A ", "--reviewer", "b"],
                       capture_output=True, text=True, env=env, timeout=120, check=False)
    assert r.returncode == 2, r.stderr
    assert r.stderr == ("resilience: error: publishing needs 3 distinct reviewers, got 2 (a, b): "
                        "add --reviewer NAME for each review level\n")
    assert not (tmp_path / "repo").exists()
    ledger = (tmp_path / "evidence" / "ledger.jsonl").read_text()
    assert '"check reviews"' in ledger and '"failed"' in ledger
