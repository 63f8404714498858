"""The pure core: the decisions and the words, with no I/O.

Admission (the gate, its leases, engine choice, the duration estimator), the
per-request plan, route matching, headers, client keys, the error hierarchy and
the vocabulary. Nothing here imports aiohttp, psutil, httpx or yaml (an
import-linter contract); everything is tested with tables.
"""
