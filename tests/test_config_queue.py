"""Config of the waiting room (issue #9): admission.queue, jobs, jobs_path, action queue."""

from __future__ import annotations

import ipaddress
import os
import textwrap
from pathlib import Path

import pytest

from gatekeeper.config import (
    ACTIONS,
    DEFAULT_ROUTES,
    MESSAGE_FIELDS,
    REASONS,
    ClientKey,
    Config,
    ConfigError,
    ConfigProblem,
    Jobs,
    Queue,
    Route,
    load_config,
    load_config_file,
)


def problems_of(text: str) -> list[ConfigProblem]:
    with pytest.raises(ConfigError) as info:
        load_config(textwrap.dedent(text))
    return info.value.problems


def test_defaults_of_the_waiting_room() -> None:
    """Defaults: 20 waiting, 30 min, 2 per client, remote key, no trusted proxies."""
    q = Config().admission.queue
    assert q == Queue(20, 1800.0, 2, ClientKey("remote", None), ())
    assert q.client_key.describe() == "remote"
    jobs = Config().jobs
    assert jobs == Jobs(None, 86400.0, 10 * 1024**3, True, None, False, False)
    assert (jobs.coalesce_vary, jobs.coalesce_across_clients) == (None, False)
    assert Config().jobs_path == "/_gatekeeper/jobs"


def test_default_generate_route_queues() -> None:
    """The default generate route is a queue route, gated like admit; /batch-generate is a
    batch route whose items are jobs of it (issue #20 §3: a batch takes no slot itself)."""
    generate = DEFAULT_ROUTES[0]
    assert (generate.name, generate.action, generate.gated) == ("generate", "queue", True)
    assert generate.summary() == "generate: POST /generate/** queue"
    assert ACTIONS == ("admit", "queue", "pass", "block", "gradio", "batch")
    gated = {a: Route(name="r", path="/r", action=a).gated for a in ACTIONS}
    # gradio: decided per Gradio request (a gated function's join takes a slot); batch: its
    # items take slots as jobs of their queue route
    assert gated == {
        "admit": True,
        "queue": True,
        "pass": False,
        "block": False,
        "gradio": False,
        "batch": False,
    }
    generates = {a for a in ACTIONS if Route(name="r", path="/r", action=a).generates}
    assert generates == {"admit", "queue", "gradio"}
    assert DEFAULT_ROUTES[1].action == "batch"
    assert DEFAULT_ROUTES[1].batch.each == "/generate"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("admission: {queue: {max_waiting: 0}}", {"max_waiting": 0}),
        ("admission: {queue: {max_waiting: 500}}", {"max_waiting": 500}),
        ("admission: {queue: {max_wait: 90s}}", {"max_wait": 90.0}),
        ("admission: {queue: {max_wait: 1h}}", {"max_wait": 3600.0}),
        ("admission: {queue: {max_wait: 0.5}}", {"max_wait": 0.5}),
        ("admission: {queue: {per_client: 1}}", {"per_client": 1}),
        ("admission: {queue: {client_key: remote}}", {"client_key": ClientKey()}),
        (
            "admission: {queue: {client_key: 'header:X-User-Id'}}",
            {"client_key": ClientKey("header", "X-User-Id")},
        ),
        (
            "admission: {queue: {client_key: 'header:x_tenant.id'}}",
            {"client_key": ClientKey("header", "x_tenant.id")},
        ),
        ("admission: {queue: {trusted_proxies: []}}", {"trusted_proxies": ()}),
        ("admission: {queue: {trusted_proxies: null}}", {"trusted_proxies": ()}),
        (
            "admission: {queue: {trusted_proxies: [127.0.0.1, 10.0.0.0/8, '::1', 'fd00::/8']}}",
            {
                "trusted_proxies": (
                    ipaddress.ip_network("127.0.0.1/32"),
                    ipaddress.ip_network("10.0.0.0/8"),
                    ipaddress.ip_network("::1/128"),
                    ipaddress.ip_network("fd00::/8"),
                )
            },
        ),
        ("admission: {queue: }", {}),
    ],
)
def test_valid_queue_values(text: str, expected: dict[str, object]) -> None:
    """Each valid admission.queue value loads as given; other keys keep their defaults."""
    q = load_config(text).admission.queue
    for key, value in expected.items():
        assert getattr(q, key) == value
    defaults = Queue()
    for key in {"max_waiting", "max_wait", "per_client", "client_key"} - set(expected):
        assert getattr(q, key) == getattr(defaults, key)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("jobs: {dir: /var/lib/gatekeeper}", {"dir": "/var/lib/gatekeeper"}),
        ("jobs: {dir: state}", {"dir": "state"}),
        ("jobs: {dir: null}", {"dir": None}),
        ("jobs: {keep: 1h}", {"keep": 3600.0}),
        ("jobs: {max_bytes: 1}", {"max_bytes": 1}),
        ("jobs: {coalesce: false}", {"coalesce": False}),
        ("jobs: {retry_interrupted: true}", {"retry_interrupted": True}),
        ("jobs:", {}),
    ],
)
def test_valid_jobs_values(text: str, expected: dict[str, object]) -> None:
    """Each valid jobs value loads as given."""
    jobs = load_config(text).jobs
    for key, value in expected.items():
        assert getattr(jobs, key) == value


@pytest.mark.parametrize(
    ("text", "jobs_path", "status_path"),
    [
        ("jobs_path: /api/jobs", "/api/jobs", "/_gatekeeper/status"),
        ("jobs_path: null", None, "/_gatekeeper/status"),
        ("{jobs_path: null, status_path: null}", None, None),
        ("status_path: /_gatekeeper/jobs\njobs_path: /_gatekeeper/j", "/_gatekeeper/j", None),
    ],
)
def test_valid_jobs_paths(text: str, jobs_path: str | None, status_path: str | None) -> None:
    """jobs_path is a plain path or null, independent of status_path unless equal."""
    cfg = load_config(text)
    assert cfg.jobs_path == jobs_path
    if status_path is not None:
        assert cfg.status_path == status_path


# (YAML, path of the problem, its line, the bad value, a fragment of the message)
INVALID = [
    ("admission:\n  queue:\n    max_waiting: -1\n", "admission.queue.max_waiting", 3, -1, ">= 0"),
    (
        "admission:\n  queue:\n    max_waiting: 2.5\n",
        "admission.queue.max_waiting",
        3,
        2.5,
        "integer",
    ),
    (
        "admission:\n  queue:\n    max_waiting: yes\n",
        "admission.queue.max_waiting",
        3,
        True,
        "integer",
    ),
    ("admission:\n  queue:\n    max_wait: 0\n", "admission.queue.max_wait", 3, 0, "> 0"),
    ("admission:\n  queue:\n    max_wait: -5s\n", "admission.queue.max_wait", 3, "-5s", "duration"),
    (
        "admission:\n  queue:\n    max_wait: later\n",
        "admission.queue.max_wait",
        3,
        "later",
        "duration",
    ),
    ("admission:\n  queue:\n    per_client: 0\n", "admission.queue.per_client", 3, 0, ">= 1"),
    (
        "admission:\n  queue:\n    per_client: two\n",
        "admission.queue.per_client",
        3,
        "two",
        "integer",
    ),
    (
        "admission:\n  queue:\n    client_key: peer\n",
        "admission.queue.client_key",
        3,
        "peer",
        "remote",
    ),
    (
        "admission:\n  queue:\n    client_key: 'header:'\n",
        "admission.queue.client_key",
        3,
        "header:",
        "header:<Name>",
    ),
    (
        "admission:\n  queue:\n    client_key: 'header:X User'\n",
        "admission.queue.client_key",
        3,
        "header:X User",
        "header name",
    ),
    (
        "admission:\n  queue:\n    client_key: 'cookie:sid'\n",
        "admission.queue.client_key",
        3,
        "cookie:sid",
        "remote",
    ),
    ("admission:\n  queue:\n    client_key: 7\n", "admission.queue.client_key", 3, 7, "remote"),
    (
        "admission:\n  queue:\n    trusted_proxies: 10.0.0.0/8\n",
        "admission.queue.trusted_proxies",
        3,
        "10.0.0.0/8",
        "list",
    ),
    (
        "admission:\n  queue:\n    trusted_proxies:\n      - 127.0.0.1\n      - 10.0.0.300\n",
        "admission.queue.trusted_proxies[1]",
        5,
        "10.0.0.300",
        "IP address or CIDR",
    ),
    (
        "admission:\n  queue:\n    trusted_proxies:\n      - 10.0.0.1/8\n",
        "admission.queue.trusted_proxies[0]",
        4,
        "10.0.0.1/8",
        "host bits set",
    ),
    (
        "admission:\n  queue:\n    trusted_proxies:\n      - 8\n",
        "admission.queue.trusted_proxies[0]",
        4,
        8,
        "IP address or CIDR",
    ),
    (
        "admission:\n  queue:\n    max_wiat: 1m\n",
        "admission.queue.max_wiat",
        3,
        None,
        "'max_wait'?",
    ),
    ("admission:\n  queue: 5\n", "admission.queue", 2, 5, "mapping"),
    ("jobs:\n  dir: ''\n", "jobs.dir", 2, "", "directory path"),
    ("jobs:\n  dir: 5\n", "jobs.dir", 2, 5, "directory path"),
    ("jobs:\n  keep: 0\n", "jobs.keep", 2, 0, "> 0"),
    ("jobs:\n  keep: forever\n", "jobs.keep", 2, "forever", "duration"),
    ("jobs:\n  max_bytes: 0\n", "jobs.max_bytes", 2, 0, ">= 1"),
    ("jobs:\n  max_bytes: 10GiB\n", "jobs.max_bytes", 2, "10GiB", "integer"),
    ("jobs:\n  coalesce: maybe\n", "jobs.coalesce", 2, "maybe", "true or false"),
    ("jobs:\n  retry_interrupted: 1\n", "jobs.retry_interrupted", 2, 1, "true or false"),
    ("jobs:\n  keeep: 1h\n", "jobs.keeep", 2, None, "'keep'?"),
    ("jobs_path: _gatekeeper/jobs\n", "jobs_path", 1, "_gatekeeper/jobs", "starting with '/'"),
    ("jobs_path: /\n", "jobs_path", 1, "/", "starting with '/'"),
    ("jobs_path: /jobs/**\n", "jobs_path", 1, "/jobs/**", "plain path"),
    ("jobs_path: /jobs/\n", "jobs_path", 1, "/jobs/", "trailing"),
    ("jobs_path: //jobs\n", "jobs_path", 1, "//jobs", "plain path"),
    ("jobs_path: /a/../jobs\n", "jobs_path", 1, "/a/../jobs", "plain path"),
    ("jobs_path: /jobs;v=1\n", "jobs_path", 1, "/jobs;v=1", "plain path"),
    ("jobs_path: 5\n", "jobs_path", 1, 5, "starting with '/'"),
    (
        "status_path: /_gk\njobs_path: /_gk\n",
        "jobs_path",
        2,
        "/_gk",
        "must differ from status_path",
    ),
    (
        "routes:\n  - name: g\n    match: {path: /g}\n    action: wait\n",
        "routes[0].action",
        4,
        "wait",
        "admit, queue, pass, block",
    ),
    (
        "routes:\n  - name: g\n    match: {path: /g}\n    action: queue\n    status: 410\n",
        "routes[0].status",
        5,
        None,  # the existing rule names the key, not its value
        "only applies to action 'block', not 'queue'",
    ),
    (
        "messages:\n  queue_full: 'full at {depth}'\n",
        "messages.queue_full",
        2,
        "full at {depth}",
        "unknown placeholder(s) {depth}",
    ),
]


@pytest.mark.parametrize(("text", "path", "line", "value", "fragment"), INVALID)
def test_invalid_values_name_path_line_and_value(
    text: str, path: str, line: int, value: object, fragment: str
) -> None:
    """Each invalid value is one problem naming its YAML path, its line and the bad value."""
    found = [p for p in problems_of(text) if p.path == path]
    assert len(found) == 1, problems_of(text)
    p = found[0]
    assert p.line == line and fragment in p.message, p
    if value is not None:
        assert p.has_value and p.value == value, p


def test_every_bad_proxy_entry_is_reported() -> None:
    """Two bad trusted_proxies entries give two problems, each with its own index and line."""
    got = problems_of(
        """\
        admission:
          queue:
            trusted_proxies:
              - nope
              - 127.0.0.1
              - 1.2.3.4/40
        """
    )
    assert [(p.path, p.line) for p in got] == [
        ("admission.queue.trusted_proxies[0]", 4),
        ("admission.queue.trusted_proxies[2]", 6),
    ]


def test_missing_action_lists_queue() -> None:
    """A route without an action is told every action, queue included."""
    got = problems_of("routes: [{name: g, match: {path: /g}}]")
    assert [p.message for p in got] == ["is required (admit, queue, pass, block, gradio or batch)"]


@pytest.mark.parametrize(
    ("source", "directory", "expected"),
    [
        ("/etc/gatekeeper/rules.yaml", None, "/etc/gatekeeper/gatekeeper-state"),
        ("/etc/gatekeeper/rules.yaml", "state", "/etc/gatekeeper/state"),
        ("/etc/gatekeeper/rules.yaml", "../var/gk", "/etc/var/gk"),
        ("/etc/gatekeeper/rules.yaml", "/var/lib/gatekeeper", "/var/lib/gatekeeper"),
        ("<defaults>", None, "{cwd}/gatekeeper-state"),
        ("<string>", None, "{cwd}/gatekeeper-state"),
        ("<string>", "state", "{cwd}/state"),
        ("<string>", "/srv/gk", "/srv/gk"),
        ("rules.yaml", None, "{cwd}/gatekeeper-state"),
        ("conf/rules.yaml", "s", "{cwd}/conf/s"),
    ],
)
def test_state_dir_resolution(
    source: str,
    directory: str | None,
    expected: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """jobs.dir: default next to the rules file, relative to its directory, cwd without one."""
    monkeypatch.chdir(tmp_path)
    got = Jobs(dir=directory).state_dir(source)
    assert got == Path(expected.format(cwd=os.getcwd()))
    assert got.is_absolute()


def test_state_dir_expands_home(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """A jobs.dir of ~/x is under the home directory, not a directory named '~'."""
    monkeypatch.setenv("HOME", str(tmp_path))
    assert Jobs(dir="~/gk").state_dir("/etc/gatekeeper/rules.yaml") == tmp_path / "gk"


def test_state_dir_of_a_loaded_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A file loaded by a relative path still puts its state next to itself."""
    conf = tmp_path / "conf"
    conf.mkdir()
    (conf / "rules.yaml").write_text("jobs:\n  dir: state\n")
    monkeypatch.chdir(tmp_path)
    cfg = load_config_file("conf/rules.yaml")
    assert cfg.jobs.state_dir(cfg.source) == conf / "state"
    assert Config().jobs.state_dir(Config().source) == tmp_path / "gatekeeper-state"


def test_state_dir_override(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """--state-dir replaces jobs.dir, made absolute against the cwd, not the file's dir."""
    monkeypatch.chdir(tmp_path)
    cfg = load_config("jobs: {dir: elsewhere, keep: 1h}", source="/etc/gk/rules.yaml")
    over = cfg.with_overrides(state_dir="run/state")
    assert over.jobs.dir == str(tmp_path / "run" / "state")
    assert over.jobs.state_dir(over.source) == tmp_path / "run" / "state"
    assert over.jobs.keep == 3600.0  # the rest of the section is the file's
    assert cfg.with_overrides(state_dir="/srv/gk").jobs.dir == "/srv/gk"
    assert cfg.with_overrides().jobs == cfg.jobs


def test_bad_state_dir_override_is_named() -> None:
    """An empty --state-dir is a command-line problem naming the flag."""
    with pytest.raises(ConfigError) as info:
        Config().with_overrides(state_dir="")
    (p,) = info.value.problems
    assert (p.path, p.value) == ("--state-dir", "")
    assert "command line" in str(info.value)


def test_queue_reasons_have_messages() -> None:
    """queue_full, queue_timeout and client_limit are reason codes with Chinese + English text."""
    for reason in ("queue_full", "queue_timeout", "client_limit", "draining"):
        assert reason in REASONS
    assert {"waiting", "max_waiting", "per_client", "max_wait", "position"} <= MESSAGE_FIELDS
    cfg = Config()
    full = cfg.message("queue_full", waiting=20, max_waiting=20, retry_after=540)
    assert "（20/20）" in full and "The queue is full (20 waiting)" in full and "540 s" in full
    limit = cfg.message("client_limit", per_client=2, retry_after=61)
    assert "您已有 2 个" in limit and "you already have 2 generations waiting or running" in (
        limit.lower()
    )
    timeout = cfg.message("queue_timeout", max_wait=1800.0, retry_after=600)
    assert "waited 1800 s without being served" in timeout and "1800.0" not in timeout
    assert "等待 1800 秒" in timeout


def test_new_placeholders_are_allowed_in_every_message() -> None:
    """Any message may use the queue placeholders; one that does not apply renders as 0."""
    cfg = load_config(
        "messages: {busy: 'busy; {waiting} waiting, you would be {position}; max {max_wait}s'}"
    )
    assert cfg.message("busy", waiting=3, position=4, max_wait=90.4) == (
        "busy; 3 waiting, you would be 4; max 90s"
    )
    assert cfg.message("busy") == "busy; 0 waiting, you would be 0; max 0s"


def test_messages_file_with_queue_reasons(tmp_path: Path) -> None:
    """A file may override the new reasons like any other."""
    path = tmp_path / "r.yaml"
    path.write_text("messages:\n  client_limit: 'max {per_client} per person'\n")
    assert load_config_file(path).message("client_limit", per_client=3) == "max 3 per person"
