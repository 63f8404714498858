"""The durable waiting room: queue routes, async jobs, kept results.

``states`` is the one state machine (every transition, every ending);
``record``/``model`` a job as stored and as live; ``handles`` each submitter's
own id on a (shared) job; ``store`` the store interface, ``guard`` its faults
as one ``StorageError`` (``sqlite``, ``sqlite_fair``, ``sqlite_heads``,
``sqlite_handles``, ``sqlite_recover``, ``statedir``, ``files``: the SQLite
implementation; ``postgres``: the one several boxes share, issue #21);
``waitroom`` and ``ordered`` (pure) and ``schedule`` the order and the ETAs;
``head`` refusals decided from a request head; ``floor`` free space;
``orphans`` engines still busy after a kill -9; ``service`` (with
``service_handles``, ``guests`` (waiters that are not jobs: Gradio events) and
``upkeep``) the queue at work; ``runner`` one exchange
with the engine; ``route``, ``held``, ``api``, ``views``, ``handle_view`` and
``watch`` the HTTP side. ``deps`` declares what the service needs from the
process around it.
"""
