# syntax=docker/dockerfile:1
#
# The streamer worker image. Two stages:
#   build    resolve the pinned dependencies (constraints.txt) into /opt/venv and build
#            the project's own wheel; every runtime dependency ships a manylinux wheel,
#            so no compiler is needed even here.
#   runtime  the same base with only /opt/venv copied in: no pip, no build tools, no
#            caches; runs as uid/gid 10001 and writes only to STREAMER_DATA_DIR.
#
# Build:  docker build -t streamer:dev .
# Run:    docker run --rm --read-only --tmpfs /tmp --tmpfs /var/lib/streamer \
#           -e STREAMER_BOOTSTRAP_SERVERS=kafka:9092 -p 6066:6066 streamer:dev
# Other commands use the same image: `docker run --rm streamer:dev topics apply`.
#
# BASE_IMAGE may be any Debian-like image with Python 3.11, python3 -m venv, useradd and
# CA certificates: the official image by default, or the mmdebstrap-made bookworm base
# that scripts/container-smoke.sh builds where no registry is reachable. Such a base may
# have no `python` command, so every step calls `python3`.
#
# Optional build secrets, for networks that reach PyPI only through a mirror or a
# TLS-inspecting proxy: `pip_conf` (a pip.conf) and `pip_ca` (a CA bundle), e.g.
#   docker build --secret id=pip_conf,src=/etc/pip.conf \
#                --secret id=pip_ca,src=/etc/ssl/certs/ca-certificates.crt .
# They are mounted only while pip runs and never end up in a layer or the history.

ARG BASE_IMAGE=python:3.11-slim-bookworm

FROM ${BASE_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
WORKDIR /src
RUN python3 -m venv /opt/venv
# Dependencies first, from pyproject.toml pinned by constraints.txt, so this layer is
# reused until one of those two files changes.
COPY pyproject.toml constraints.txt ./
RUN --mount=type=secret,id=pip_conf,target=/run/secrets/pip.conf \
    --mount=type=secret,id=pip_ca,target=/run/secrets/pip-ca.pem \
    if [ -s /run/secrets/pip.conf ]; then export PIP_CONFIG_FILE=/run/secrets/pip.conf; fi \
 && if [ -s /run/secrets/pip-ca.pem ]; then export PIP_CERT=/run/secrets/pip-ca.pem; fi \
 && python3 -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" \
        > requirements.txt \
 && /opt/venv/bin/pip install -c constraints.txt -r requirements.txt
# Then the project itself, as a wheel (.dockerignore keeps the context to the sources).
# pip's build isolation fetches setuptools from the index, so the secrets are needed here too.
COPY . .
RUN --mount=type=secret,id=pip_conf,target=/run/secrets/pip.conf \
    --mount=type=secret,id=pip_ca,target=/run/secrets/pip-ca.pem \
    if [ -s /run/secrets/pip.conf ]; then export PIP_CONFIG_FILE=/run/secrets/pip.conf; fi \
 && if [ -s /run/secrets/pip-ca.pem ]; then export PIP_CERT=/run/secrets/pip-ca.pem; fi \
 && /opt/venv/bin/pip wheel --no-deps -w /wheels . \
 && /opt/venv/bin/pip install --no-deps /wheels/*.whl \
 && /opt/venv/bin/pip check \
 && /opt/venv/bin/python -m pip uninstall -y pip setuptools wheel \
 && /opt/venv/bin/streamer --help > /dev/null

FROM ${BASE_IMAGE} AS runtime
LABEL org.opencontainers.image.title="streamer" \
      org.opencontainers.image.description="Multi-tenant audit-log streaming from Kafka to S3 and REST log providers" \
      org.opencontainers.image.licenses="Apache-2.0"
# The official image's own pip/setuptools are not needed at run time either (a plain
# Debian base has none to remove).
RUN if python3 -m pip --version > /dev/null 2>&1; then python3 -m pip uninstall -y pip setuptools wheel; fi \
 && groupadd --system --gid 10001 streamer \
 && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin streamer \
 && mkdir -p /var/lib/streamer \
 && chown 10001:10001 /var/lib/streamer
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    STREAMER_WEB_HOST=0.0.0.0 \
    STREAMER_WEB_PORT=6066 \
    STREAMER_DATA_DIR=/var/lib/streamer
WORKDIR /var/lib/streamer
USER 10001:10001
EXPOSE 6066
ENTRYPOINT ["streamer"]
CMD ["worker"]
