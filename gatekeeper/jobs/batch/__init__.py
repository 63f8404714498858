"""Batch generation restored safely (issue #20 §3): one request, N fair jobs.

A route with ``action: batch`` (``config.batch.BatchSpec``) takes the engine's
own batch body, cuts it into items (``items``, pure, over ``pointer``), and
queues one async job per item on the ``each`` queue route, all in one store
transaction (``service``: ``JobStore.create_batch``, a ``record.BatchRecord``
plus N jobs). Its items then wait their turn in the waiting room's fair ring
under the submitter's client key like any other jobs. ``route`` is the HTTP
side (``POST`` -> 202 + ``Location``), ``api`` the batch endpoints under
``{jobs_path}/batches/<id>``, ``view`` their JSON, ``archive`` the results as
one tar streamed from disk, ``openapi`` their OpenAPI fragment.
"""
