"""Every repository path named in the package, the docs, the deploy files, the bench, the
tests, the scripts and the README exists: a moved or deleted file cannot leave its
citations behind.

A path is a word starting with one of the repository's top directories (``docs/``,
``tests/``, ``bench/``, ``deploy/``, ``gatekeeper/``, ``dashboards/``, ``scripts/``), not
inside a URL or a longer path. A glob (``deploy/kubernetes/*.yaml``) must match a file;
a template (``gatekeeper/{version}``, ``docs/<name>.md``) is not a path and is skipped.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
TOP = ("docs", "tests", "bench", "deploy", "gatekeeper", "dashboards", "scripts")
# Not preceded by a word, a dot, a slash or a dash (a URL, `../docs/x`, `a/tests/b`); the
# first segment starts with a letter (`gatekeeper/0.1.0` is a User-Agent, not a path).
PATH = re.compile(
    r"(?<![\w./-])((?:" + "|".join(TOP) + r")/(?:[A-Za-z_*][\w.*-]*/?)+)(?P<after>[{<$]?)"
)
TEXT_SUFFIXES = {".py", ".md", ".yaml", ".yml", ".cfg", ".txt", ".json", ".service", ".conf", ""}
SKIP_DIRS = {"__pycache__", "images"}


# Where paths are named: the package, the docs, the deploy files, the bench, the tests (this
# file's examples aside), the scripts and the README.
PLACES = ("gatekeeper", "docs", "deploy", "bench", "tests", "scripts", "README.md")


def sources(place: str) -> list[Path]:
    """The text files of ``place`` (a top directory, or a file)."""
    top = ROOT / place
    if top.is_file():
        return [top]
    return [
        p
        for p in sorted(top.rglob("*"))
        if p.is_file()
        and p.suffix in TEXT_SUFFIXES
        and not SKIP_DIRS.intersection(p.relative_to(ROOT).parts)
        and p != Path(__file__).resolve()
    ]


def cited(text: str) -> list[tuple[int, str]]:
    """(line, path) of every repository path in ``text``; templates left out."""
    out = []
    for number, line in enumerate(text.splitlines(), 1):
        for m in PATH.finditer(line):
            path = m.group(1).rstrip(".")
            if m.group("after"):
                continue
            out.append((number, path))
    return out


def exists(path: str) -> bool:
    if "*" in path:
        return any(ROOT.glob(path))
    return (ROOT / path).exists()


@pytest.mark.parametrize("place", PLACES)
def test_every_path_named_there_exists(place: str) -> None:
    missing = [
        f"{source.relative_to(ROOT)}:{n}: {p}"
        for source in sources(place)
        for n, p in cited(source.read_text(encoding="utf-8", errors="replace"))
        if not exists(p)
    ]
    assert not missing, "paths that do not exist:\n" + "\n".join(missing)


def test_the_places_hold_files() -> None:
    assert all(sources(place) for place in PLACES)
    assert ROOT / "gatekeeper" / "jobs" / "service.py" in sources("gatekeeper")


@pytest.mark.parametrize(
    ("text", "paths"),
    [
        ("see docs/architecture.md.", ["docs/architecture.md"]),
        ("(`gatekeeper/jobs/store.py`)", ["gatekeeper/jobs/store.py"]),
        ("kubectl apply -f deploy/kubernetes/", ["deploy/kubernetes/"]),
        ("deploy/kubernetes/*.yaml", ["deploy/kubernetes/*.yaml"]),
        ("https://example.com/docs/x.md ../docs/y.md a/tests/z.py", []),
        ("User-Agent: gatekeeper/0.1.0, gatekeeper/{version}, docs/<name>.md", []),
    ],
)
def test_what_counts_as_a_path(text: str, paths: list[str]) -> None:
    assert [p for _, p in cited(text)] == paths


def test_a_missing_path_is_caught() -> None:
    assert not exists("docs/waiting-room-that-never-was.md")
    assert not exists("deploy/kubernetes/*.nothing")
    assert exists("deploy/haproxy/haproxy.cfg")
