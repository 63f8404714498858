"""The Gradio queue protocol, admitted per generation (a ``gradio`` route).

``wire`` (pure) parses paths, join bodies and SSE frames; ``route`` handles
each Gradio request; ``events`` holds the gated events in flight, each with its
lease; ``streams`` observes the relayed streams; ``names`` reads the app's API
names from its ``/config``; ``joinbody`` reads a join's body. A gated join with
no free slot waits (issue #19): ``queueing`` seats it in the jobs' waiting room
as a ``held.HeldEvent`` and keeps the sessions' ``pipe``s, the session streams
gatekeeper writes by the rules of ``splice`` (pure). See docs/gradio.md.
"""
