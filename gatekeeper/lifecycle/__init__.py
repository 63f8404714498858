"""What changes while gatekeeper runs: the rules in force, reloads, probes, the loop.

``runtime`` is everything derived from one config (router, engine pools);
``reload``/``changes``/``epochs`` swap it without touching a running job;
``probe`` watches the engines; ``haproxy_agent`` answers HAProxy;
``eventloop`` picks uvloop or asyncio.
"""
