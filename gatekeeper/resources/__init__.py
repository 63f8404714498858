"""What the box has left: background sampling of CPU, memory, PSI, cgroup and GPUs.

``samplers`` reads psutil, cgroup v2 (``cgroup``), PSI (``psi``) and NVML
(``gpu``); ``monitor`` samples in the background and publishes an immutable
state onto the gate, so the request path never reads a file or calls psutil.
"""
