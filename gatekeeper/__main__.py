"""``python -m gatekeeper`` is the ``gatekeeper`` command."""

import sys

from .cli import main

sys.exit(main())
