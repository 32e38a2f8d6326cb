# chanfleet: one image for every role of deploy/entrypoint.sh (http, ws, migrate, drain).
#
#   make image                     # builds chanfleet:<appVersion>, smoke-tests it, saves a tar
#   docker build -t chanfleet:dev .
#   docker run --rm -e SECRET_KEY=... -e DATABASE_URL=... chanfleet:dev http
#
# Nothing secret is baked in: SECRET_KEY, DATABASE_URL and the Redis passwords come from the
# environment at run time (Kubernetes Secrets in deploy/helm/chanfleet).
#
# Base: Debian's own debian:bookworm-slim with Debian's python3 (3.11), not python:3.11-slim.
# A machine that cannot pull images (no route to a container registry) can make this exact
# base from Debian's packages alone (`python -m deploy.image base`: mmdebstrap, then an import
# under the same name), so what is tested there is what a normal machine pulls; python:*-slim
# is CPython compiled by Docker's own build and cannot be remade that way. Python security
# fixes come from Debian's archive with every rebuild. Debian's 3.11.2 is older than 3.11.3,
# so redis-py needs async-timeout, which requirements.lock pins for that case only.
# deploy/image/README.md has the details.

# ---------------------------------------------------------------- build: dependencies, static
FROM docker.io/library/debian:bookworm-slim AS build

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1

# Versions follow the Debian release (bookworm and its security updates), not exact pins:
# a pinned Debian version disappears from the archive with the next security fix.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv \
    && rm -rf /var/lib/apt/lists/*

# Every runtime dependency pinned in requirements.lock (the full transitive set, so
# --no-deps installs exactly that and nothing else); all of them ship manylinux wheels,
# so no compiler is needed.
RUN python3 -m venv /opt/venv
COPY requirements.lock /tmp/requirements.lock
# The optional secret "ca-bundle" is the build host's CA bundle, for hosts whose HTTPS goes
# through an intercepting proxy; it is mounted for this command only and kept in no layer.
RUN --mount=type=secret,id=ca-bundle \
    if [ -s /run/secrets/ca-bundle ]; then export PIP_CERT=/run/secrets/ca-bundle; fi \
    && /opt/venv/bin/pip install --no-deps --only-binary=:all: -r /tmp/requirements.lock

WORKDIR /app
COPY manage.py ./
COPY app ./app
COPY deploy/__init__.py deploy/entrypoint.sh deploy/gunicorn.conf.py ./deploy/

# Static files are collected once, here, and served by whitenoise. The settings require a
# SECRET_KEY when DEBUG is off; this one exists only for this command and is not kept.
RUN SECRET_KEY=build-only DEBUG=0 /opt/venv/bin/python manage.py collectstatic --noinput \
    && /opt/venv/bin/python -m compileall -q /app/app /app/deploy

# ---------------------------------------------------------------- runtime
FROM docker.io/library/debian:bookworm-slim

ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    DJANGO_SETTINGS_MODULE=app.settings \
    PORT=8000 \
    INTERNAL_PORT=9000

# The interpreter the venv points at (/usr/bin/python3), and a fixed, unprivileged uid/gid
# (the chart's securityContext uses 10001 too).
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --gid 10001 chanfleet \
    && useradd --uid 10001 --gid chanfleet --no-create-home \
        --home-dir /nonexistent --shell /usr/sbin/nologin chanfleet

COPY --from=build /opt/venv /opt/venv
COPY --from=build /app /app

WORKDIR /app
# Root owns the code; the process can write nowhere in the image (Kubernetes also mounts the
# root filesystem read-only and gives /tmp as an emptyDir).
USER 10001:10001

# 9000 (INTERNAL_PORT: drain and status) listens on the container's loopback only: not exposed.
EXPOSE 8000

# No HEALTHCHECK: Kubernetes ignores it and probes /healthz and /readyz itself, and a check
# would be wrong for the migrate role, which exits when done.
ENTRYPOINT ["/app/deploy/entrypoint.sh"]
CMD ["http"]
