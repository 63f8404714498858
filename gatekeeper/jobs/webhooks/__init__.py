"""Signed, durable webhooks for jobs (issue #20 §1; docs/webhooks.md).

The pure rules: ``allow`` (which URL a request may name), ``policy`` (event
filters, the progress throttle, the backoff schedule, what an answer means),
``sign`` (Standard Webhooks signatures), ``payload`` (the body and its JSON
Schema). The outbox rows are ``jobs.outbox`` (written by the store with the
state change they announce); ``emit`` builds them from a job's events,
``deliver`` sends them (httpx, per-destination lanes), ``secrets`` reads the
signing secrets, ``request`` reads a request's Gatekeeper-Webhook headers.
"""

from gatekeeper.jobs.webhooks.payload import openapi_fragment

__all__ = ["openapi_fragment"]
