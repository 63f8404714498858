"""gatekeeper: a reverse proxy that admits one AI music generation at a time."""

__version__ = "0.1.0"
