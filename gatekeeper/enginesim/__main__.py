"""``python -m gatekeeper.enginesim``: the same as ``gatekeeper engine-sim``."""

import argparse
import sys

from gatekeeper.enginesim import __doc__ as package_doc
from gatekeeper.enginesim import add_arguments, main

_parser = argparse.ArgumentParser(prog="engine-sim", description=package_doc.split("\n")[0])
add_arguments(_parser)
sys.exit(main(_parser.parse_args()))
