"""The Gradio queue protocol, admitted per generation (a ``gradio`` route).

``wire`` (pure) parses paths, join bodies and SSE frames; ``route`` handles
each Gradio request; ``events`` holds the gated events in flight, each with its
lease; ``streams`` observes the relayed streams; ``frames`` (pure) reads the
engine's progress and whether a completion carries its result; ``orphans``
reads a session's stream that no client reads; ``names`` reads the app's API
names and result outputs from its ``/config``. See docs/gradio.md.
"""
