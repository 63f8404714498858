"""The durable waiting room: queue routes, async jobs, kept results.

``states`` is the one state machine (every transition, every ending);
``record``/``model`` a job as stored and as live; ``handles`` each submitter's
own id on a (shared) job; ``store`` the store interface (``sqlite``,
``sqlite_fair``, ``sqlite_handles``, ``statedir``, ``files``: the SQLite
implementation); ``waitroom`` (pure) and ``schedule`` the order and the ETAs;
``service`` (with ``service_handles``) the queue at work; ``runner`` one
exchange with the engine; ``route``, ``api``, ``views`` and ``handle_view`` the
HTTP side. ``deps`` declares what the service needs from the process around it.
"""
