"""Table tests of route matching (globs, methods, first match wins)."""

from __future__ import annotations

from pathlib import Path

import pytest

from gatekeeper.config import DEFAULT_ROUTES, Route, load_config_file
from gatekeeper.core.routes import PASS_ROUTE, Router, compile_glob, lint, normalize_path
from gatekeeper.enginesim import WORK_ENDPOINTS


@pytest.mark.parametrize(
    ("pattern", "path", "matches"),
    [
        ("/generate", "/generate", True),
        ("/generate", "/generate/", False),
        ("/generate", "/generatex", False),
        ("/files/*.wav", "/files/a.wav", True),
        ("/files/*.wav", "/files/x/a.wav", False),  # * stays within one segment
        ("/files/*", "/files/", True),
        ("/files/**", "/files", True),
        ("/files/**", "/files/a/b/c.wav", True),
        ("/files/**", "/filesx/a", False),
        ("/api/**/status", "/api/status", True),
        ("/api/**/status", "/api/a/b/status", True),
        ("/api/**/status", "/api/a/b/statusx", False),
        ("/**", "/", True),
        ("/**", "/anything/at/all", True),
        ("/a.b", "/aXb", False),  # regex metacharacters are literal
        ("/v1/*/generate", "/v1/song/generate", True),
        ("/v1/*/generate", "/v1/a/b/generate", False),
    ],
)
def test_glob_table(pattern: str, path: str, matches: bool) -> None:
    """`*` matches within a segment, a whole `**` segment matches any number of segments."""
    assert (compile_glob(pattern).match(path) is not None) is matches


def test_default_routes() -> None:
    """Default rules: POST /generate queues (waits its turn), POST /batch-generate is a
    batch of /generate jobs (issue #20 §3), the rest passes."""
    router = Router(DEFAULT_ROUTES)
    assert router.match("POST", "/generate").action == "queue"
    assert router.match("GET", "/generate") is PASS_ROUTE
    batch = router.match("POST", "/batch-generate")
    assert batch.action == "batch" and router.match("POST", batch.batch.each).action == "queue"
    assert router.match("GET", "/progress/1") is PASS_ROUTE


def test_first_match_wins() -> None:
    """Routes are tried in order; a later broader route never shadows an earlier one."""
    router = Router(
        (
            Route(name="health", path="/api/health", action="pass"),
            Route(name="api", path="/api/**", action="admit", methods=frozenset({"POST", "GET"})),
        )
    )
    assert router.match("GET", "/api/health").name == "health"
    assert router.match("GET", "/api/x").name == "api"
    assert router.match("DELETE", "/api/x") is PASS_ROUTE


@pytest.mark.parametrize(
    ("raw", "normal"),
    [
        ("/generate", "/generate"),
        ("/", "/"),
        ("//generate", "/generate"),
        ("/generate/", "/generate"),
        ("/generate//", "/generate"),
        ("/./generate", "/generate"),
        ("/generate/.", "/generate"),
        ("/x/../generate", "/generate"),
        ("/../../generate", "/generate"),
        ("/generate;v=1", "/generate"),
        ("/generate;x/stream", "/generate/stream"),
        ("/GENERATE", "/GENERATE"),
        ("/files/a.wav", "/files/a.wav"),
        ("/files/.hidden", "/files/.hidden"),
        ("/a/..b", "/a/..b"),
    ],
)
def test_normalize_path_table(raw: str, normal: str) -> None:
    """Spellings of the same path collapse to one form; case and real names are kept."""
    assert normalize_path(raw) == normal


@pytest.mark.parametrize(
    "path",
    [
        "//generate",
        "/generate/",
        "/generate;x",
        "/./generate",
        "/x/../generate",
        "/generate/stream",
    ],
)
def test_default_routes_gate_every_spelling_of_generate(path: str) -> None:
    """Non-normal spellings of POST /generate (and paths under it) are admitted, not passed."""
    assert Router(DEFAULT_ROUTES).match("POST", path).name == "generate"


def test_default_rules_lint_clean() -> None:
    """The shipped routes have no gated path a client can walk around."""
    assert lint(DEFAULT_ROUTES) == []


@pytest.mark.parametrize(
    ("routes", "warned"),
    [
        ((Route(name="g", path="/generate", action="admit", methods=frozenset({"POST"})),), True),
        ((Route(name="g", path="/generate/**", action="admit"),), False),
        ((Route(name="g", path="/generate/*", action="admit"),), False),
        (
            (
                Route(name="g", path="/generate", action="admit"),
                Route(name="rest", path="/generate/**", action="block"),
            ),
            False,
        ),
        (
            (
                Route(name="g", path="/generate", action="admit", methods=frozenset({"POST"})),
                Route(name="pt", path="/generate/**", action="pass"),
            ),
            True,
        ),
        ((Route(name="p", path="/generate", action="pass"),), False),
    ],
)
def test_lint_table(routes: tuple[Route, ...], warned: bool) -> None:
    """An exact admit path whose sub-paths pass unadmitted is warned about, with a fix."""
    warnings = lint(routes)
    assert bool(warnings) is warned, warnings
    if warned:
        assert "use path: /generate/**" in warnings[0]


def test_shipped_rules_gate_every_engine_sim_work_endpoint(repo_root: Path) -> None:
    """Every endpoint of the bundled engine that starts work is gated (admit or queue),
    blocked, or a batch whose items are jobs of a queue route (never passed whole)."""
    router = Router(load_config_file(repo_root / "rules.yaml").routes)
    for method, path in WORK_ENDPOINTS:
        for spelling in (path, path + "/", "/" + path, path + ";v=1"):
            route = router.match(method, spelling)
            assert route.action in ("admit", "queue", "block", "batch"), (method, spelling, route)
            if route.action == "batch":
                assert router.match("POST", route.batch.each).action == "queue", route
