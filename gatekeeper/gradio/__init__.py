"""The Gradio queue protocol, admitted per generation (a ``gradio`` route).

``wire`` (pure) parses paths, join bodies and SSE frames; ``route`` handles
each Gradio request; ``events`` holds the gated events in flight, each with its
lease; ``streams`` observes the relayed streams; ``frames`` (pure) reads the
engine's progress and whether a completion carries its result; ``names`` reads
the app's API names and result outputs from its ``/config``; ``joinbody`` reads
a join's body. A gated join with no free slot waits (issue #19): ``queueing``
seats it in the jobs' waiting room as a ``held.HeldEvent`` and keeps the
sessions' ``pipe``s, the session streams gatekeeper writes (and reads from the
app, whether or not a client reads them) by the rules of ``splice`` (pure).
See docs/gradio.md.
"""
