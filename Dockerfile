# syntax=docker/dockerfile:1
#
# The streamer worker image. Two stages:
#   build    resolve the pinned dependencies (constraints.txt) into /opt/venv and build
#            the project's own wheel; every runtime dependency ships a manylinux wheel,
#            so no compiler is needed even here.
#   runtime  python:3.11-slim with only /opt/venv copied in: no pip, no build tools,
#            no caches; runs as uid/gid 10001 and writes only to STREAMER_DATA_DIR.
#
# Build:  docker build -t streamer:dev .
# Run:    docker run --rm --read-only --tmpfs /tmp --tmpfs /var/lib/streamer \
#           -e STREAMER_BOOTSTRAP_SERVERS=kafka:9092 -p 6066:6066 streamer:dev
# Other commands use the same image: `docker run --rm streamer:dev topics apply`.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
WORKDIR /src
RUN python -m venv /opt/venv
# Dependencies first, from pyproject.toml pinned by constraints.txt, so this layer is
# reused until one of those two files changes.
COPY pyproject.toml constraints.txt ./
RUN python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" \
        > requirements.txt \
 && /opt/venv/bin/pip install -c constraints.txt -r requirements.txt
# Then the project itself, as a wheel (.dockerignore keeps the context to the sources).
COPY . .
RUN /opt/venv/bin/pip wheel --no-deps -w /wheels . \
 && /opt/venv/bin/pip install --no-deps /wheels/*.whl \
 && /opt/venv/bin/pip check \
 && /opt/venv/bin/python -m pip uninstall -y pip setuptools wheel \
 && /opt/venv/bin/streamer --help > /dev/null

FROM ${PYTHON_IMAGE} AS runtime
LABEL org.opencontainers.image.title="streamer" \
      org.opencontainers.image.description="Multi-tenant audit-log streaming from Kafka to S3 and REST log providers" \
      org.opencontainers.image.licenses="Apache-2.0"
# The base image's own pip/setuptools are not needed at run time either.
RUN python -m pip uninstall -y pip setuptools wheel 2>/dev/null || true \
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
