# chanfleet: one image for every role of deploy/entrypoint.sh (http, ws, migrate, drain).
#
#   docker build -t chanfleet:dev .
#   docker run --rm -e SECRET_KEY=... -e DATABASE_URL=... chanfleet:dev http
#
# Nothing secret is baked in: SECRET_KEY, DATABASE_URL and the Redis passwords come from the
# environment at run time (Kubernetes Secrets in deploy/helm/chanfleet).

# ---------------------------------------------------------------- build: dependencies, static
FROM python:3.11.13-slim-bookworm AS build

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1

# Every runtime dependency pinned in requirements.lock (the full transitive set, so
# --no-deps installs exactly that and nothing else); all of them ship manylinux wheels,
# so no compiler is needed.
RUN python -m venv /opt/venv
COPY requirements.lock /tmp/requirements.lock
RUN /opt/venv/bin/pip install --no-deps --only-binary=:all: -r /tmp/requirements.lock

WORKDIR /app
COPY manage.py ./
COPY app ./app
COPY deploy/__init__.py deploy/entrypoint.sh deploy/gunicorn.conf.py ./deploy/

# Static files are collected once, here, and served by whitenoise. The settings require a
# SECRET_KEY when DEBUG is off; this one exists only for this command and is not kept.
RUN SECRET_KEY=build-only DEBUG=0 /opt/venv/bin/python manage.py collectstatic --noinput \
    && /opt/venv/bin/python -m compileall -q /app/app /app/deploy

# ---------------------------------------------------------------- runtime
FROM python:3.11.13-slim-bookworm

ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    DJANGO_SETTINGS_MODULE=app.settings \
    PORT=8000

# A fixed, unprivileged uid/gid (the chart's securityContext uses 10001 too).
RUN groupadd --gid 10001 chanfleet \
    && useradd --uid 10001 --gid chanfleet --no-create-home \
        --home-dir /nonexistent --shell /usr/sbin/nologin chanfleet

COPY --from=build /opt/venv /opt/venv
COPY --from=build /app /app

WORKDIR /app
# Root owns the code; the process can write nowhere in the image (Kubernetes also mounts the
# root filesystem read-only and gives /tmp as an emptyDir).
USER 10001:10001

EXPOSE 8000

# No HEALTHCHECK: Kubernetes ignores it and probes /healthz and /readyz itself, and a check
# would be wrong for the migrate role, which exits when done.
ENTRYPOINT ["/app/deploy/entrypoint.sh"]
CMD ["http"]
