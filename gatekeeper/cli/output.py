"""The command line's standard output, when its reader goes away (`gatekeeper status | head`)."""

from __future__ import annotations

import os
import signal
import sys

EXIT_BROKEN_PIPE = 128 + signal.SIGPIPE


def broken_pipe() -> int:
    """The reader of stdout went away (`gatekeeper status | head -3`): stop quietly.

    Python ignores SIGPIPE, so a write raises BrokenPipeError instead of ending the
    process like a Unix tool. Pointing stdout at /dev/null keeps the interpreter's own
    final flush from raising it again; the exit status is what the signal would give.
    """
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)
    return EXIT_BROKEN_PIPE
