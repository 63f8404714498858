"""``python -m gatekeeper`` is the ``gatekeeper`` command."""

import sys

from gatekeeper.cli.main import main

sys.exit(main())
