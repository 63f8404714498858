"""The Gradio queue protocol, admitted per generation (a ``gradio`` route).

``wire`` (pure) parses paths, join bodies and SSE frames; ``route`` handles
each Gradio request; ``events`` holds the gated events in flight, each with its
lease; ``streams`` observes the relayed streams; ``names`` reads the app's API
names from its ``/config``. See docs/gradio.md.
"""
