# gatekeeper container image: docker build -t gatekeeper:0.1.0 .
# Runs as a non-root user; `gatekeeper run` is the entrypoint, so arguments given to
# `docker run` (or a pod's args) are run's flags, e.g. --config /etc/gatekeeper/rules.yaml.

FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY gatekeeper ./gatekeeper
RUN python -m venv /opt/gatekeeper \
 && /opt/gatekeeper/bin/pip install --no-cache-dir --upgrade pip \
 && /opt/gatekeeper/bin/pip install --no-cache-dir '.[speed]'

FROM python:3.11-slim
RUN groupadd --system --gid 10001 gatekeeper \
 && useradd --system --uid 10001 --gid 10001 --no-create-home --shell /usr/sbin/nologin gatekeeper
COPY --from=build /opt/gatekeeper /opt/gatekeeper
# The documented defaults; mount your own rules over /etc/gatekeeper (a ConfigMap in k8s).
COPY gatekeeper/rules.yaml /etc/gatekeeper/rules.yaml
ENV PATH=/opt/gatekeeper/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1
USER 10001:10001
EXPOSE 8080 9090
# SIGTERM drains (running generations finish); give `docker stop` a long --time / -t.
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=10s --timeout=3s --start-period=5s \
  CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:9090/healthz', timeout=2)"]
ENTRYPOINT ["gatekeeper", "run"]
CMD ["--config", "/etc/gatekeeper/rules.yaml"]
