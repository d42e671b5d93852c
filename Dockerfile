# asrd as a container (sidecar or standalone). Config at /etc/asrd/asrd.toml; secrets as
# files (mounted secrets, *_file keys) or ASRD_* environment variables; state in /var/lib/asrd.
FROM python:3.11-slim-bookworm AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY daemon ./daemon
RUN python -m venv /opt/asrd && /opt/asrd/bin/pip install --no-cache-dir .

FROM python:3.11-slim-bookworm
RUN useradd --system --home-dir /var/lib/asrd --create-home asrd
COPY --from=build /opt/asrd /opt/asrd
COPY config/asrd.example.toml /etc/asrd/asrd.example.toml
ENV PATH=/opt/asrd/bin:$PATH PYTHONUNBUFFERED=1
USER asrd
VOLUME ["/var/lib/asrd"]
STOPSIGNAL SIGTERM
ENTRYPOINT ["asrd"]
CMD ["run", "--config", "/etc/asrd/asrd.toml"]
