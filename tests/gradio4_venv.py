"""A virtualenv with gradio 4.x, made once per version and kept for reruns.

The SongGeneration demo pinned ``gradio==4.26.0`` in its early releases; 4.x has no
``/gradio_api`` prefix on its routes. Its dependencies need two pins today
(``huggingface_hub<1.0``: 4.x imports ``HfFolder``; ``pydantic==2.10.6``: 4.x's schema
code breaks on newer pydantic). The venv lives in ``$GATEKEEPER_GRADIO4_DIR`` (default
the system temp dir) as ``gk-gradio4-venv-<version>``; it is built under a ``.tmp``
name and renamed only once gradio imports, so a half-built one is never used.

``gradio4_python`` returns the venv's python, or says why there is none:

- pip cannot install it here (no such release reachable, no network): ``Unavailable``,
  the test skips with pip's last lines, even under ``GATEKEEPER_REQUIRE_E2E=1``;
- it installs but does not import: ``Broken``, the test fails under
  ``GATEKEEPER_REQUIRE_E2E=1`` (and skips otherwise).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

PINS = ("huggingface_hub<1.0", "pydantic==2.10.6")
INSTALL_TIMEOUT = 1200.0


class Unavailable(Exception):
    """gradio of that version cannot be installed on this machine."""


class Broken(Exception):
    """It installed, but does not import or run."""


def venv_dir(version: str) -> Path:
    base = Path(os.environ.get("GATEKEEPER_GRADIO4_DIR", tempfile.gettempdir()))
    return base / f"gk-gradio4-venv-{version}"


def _tail(text: str, lines: int = 6) -> str:
    return " | ".join(line.strip() for line in text.strip().splitlines()[-lines:])


def _version_of(python: Path) -> str:
    probe = subprocess.run(
        [str(python), "-c", "import gradio, gradio_client; print(gradio.__version__)"],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "GRADIO_ANALYTICS_ENABLED": "False", "HF_HUB_OFFLINE": "1"},
    )
    if probe.returncode != 0:
        raise Broken(f"gradio installed but does not import: {_tail(probe.stderr)}")
    return probe.stdout.strip()


def gradio4_python(version: str) -> Path:
    """The python of a venv with ``gradio==version`` (built now if not cached)."""
    final = venv_dir(version)
    python = final / "bin" / "python"
    if (final / "ready").exists():
        return python
    building = final.with_name(final.name + ".tmp")
    shutil.rmtree(building, ignore_errors=True)
    made = subprocess.run(
        [sys.executable, "-m", "venv", str(building)], capture_output=True, text=True
    )
    if made.returncode != 0:
        raise Unavailable(f"python -m venv failed: {_tail(made.stderr)}")
    try:
        pip = subprocess.run(
            [
                str(building / "bin" / "python"),
                "-m",
                "pip",
                "install",
                "--disable-pip-version-check",
                "-q",
                f"gradio=={version}",
                *PINS,
            ],
            capture_output=True,
            text=True,
            timeout=INSTALL_TIMEOUT,
        )
    except subprocess.TimeoutExpired as exc:
        shutil.rmtree(building, ignore_errors=True)
        raise Unavailable(f"pip install gradio=={version} took over {exc.timeout:g}s") from exc
    if pip.returncode != 0:
        shutil.rmtree(building, ignore_errors=True)
        raise Unavailable(f"pip install gradio=={version} failed: {_tail(pip.stderr)}")
    got = _version_of(building / "bin" / "python")
    if got != version:
        raise Broken(f"asked for gradio {version}, the venv has {got}")
    shutil.rmtree(final, ignore_errors=True)
    building.rename(final)  # venv scripts keep the .tmp path in their shebangs; python
    (final / "ready").write_text(version + "\n")  # itself is run by path, so it works
    return python


if (
    __name__ == "__main__"
):  # CI builds the venvs before the suite: python tests/gradio4_venv.py 4.26.0
    for wanted in sys.argv[1:]:
        try:
            print(f"gradio {wanted}: {gradio4_python(wanted)}")
        except (Unavailable, Broken) as exc:  # the test says so again, and skips or fails
            print(f"gradio {wanted}: {exc}", file=sys.stderr)
