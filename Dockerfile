# asrd as a container (sidecar or standalone); README "Running it" shows docker run, compose
# and Kubernetes. Runs as uid:gid 10001:10001 (numeric, so runAsNonRoot can check it).
#   config   /etc/asrd/asrd.toml (mounted read-only), overridden by ASRD_* variables
#   secrets  /run/secrets/<name> (mounted files): relative *_file keys resolve there
#   state    /var/lib/asrd (volume, writable by 10001): ledger.db, and file sinks by default
#   API      :8090 (/healthz, /readyz, /metrics, /v1/jobs); on 0.0.0.0 /v1/* needs a bearer
#            token: ASRD_HTTP__TOKEN_FILE=http_token with /run/secrets/http_token, or listen on
#            loopback (ASRD_HTTP__LISTEN=127.0.0.1:8090), else asrd exits 78
# Stopping: SIGTERM drains within [pulsar] shutdown_deadline_s (30 s by default), so give it
# more than that: docker run/stop --stop-timeout 45, compose stop_grace_period: 45s, Kubernetes
# terminationGracePeriodSeconds: 45. An idle daemon exits within 2 s.
#
# Base: python:3.11-slim-bookworm pinned by its index digest; change tag and digest together.
# Offline or mirrored builds: --build-arg PIP_INDEX_URL=... or PIP_NO_INDEX=1 PIP_FIND_LINKS=DIR.
ARG PYTHON_BASE=python:3.11-slim-bookworm@sha256:2e32f7d302adc1c37428355c1e646897c0c53f4fd60b6a551245fb90ee129f91

FROM ${PYTHON_BASE} AS build
ARG PIP_INDEX_URL=https://pypi.org/simple
ARG PIP_NO_INDEX=0
ARG PIP_FIND_LINKS=""
WORKDIR /src
COPY pyproject.toml README.md ./
COPY config ./config
COPY systemd ./systemd
COPY daemon ./daemon
RUN python -m venv /opt/asrd \
    && /opt/asrd/bin/pip install --no-cache-dir --disable-pip-version-check . \
    && /opt/asrd/bin/pip uninstall --yes pip

FROM ${PYTHON_BASE}
# Fixed ids (documented above) and no home skeleton: the state volume holds only asrd's files.
RUN groupadd --gid 10001 asrd \
    && useradd --no-log-init --uid 10001 --gid 10001 --no-create-home \
        --home-dir /var/lib/asrd --shell /usr/sbin/nologin asrd \
    && install -d -o 10001 -g 10001 -m 0755 /var/lib/asrd \
    && install -d -m 0755 /etc/asrd /run/secrets
COPY --from=build /opt/asrd /opt/asrd
COPY config/asrd.example.toml /etc/asrd/asrd.example.toml
ENV PATH=/opt/asrd/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    CREDENTIALS_DIRECTORY=/run/secrets \
    ASRD_HTTP__LISTEN=0.0.0.0:8090
USER 10001:10001
WORKDIR /var/lib/asrd
VOLUME ["/var/lib/asrd"]
EXPOSE 8090
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=30s --timeout=5s --start-period=10s --retries=3 \
    CMD ["python", "-c", "import urllib.request as u; u.urlopen('http://127.0.0.1:8090/healthz', timeout=4)"]
ENTRYPOINT ["asrd"]
CMD ["run", "--config", "/etc/asrd/asrd.toml"]
