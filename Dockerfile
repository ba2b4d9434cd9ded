# One image for every stepmail service; the command picks the service:
#   docker run stepmail stepmail-ingest        (the default)
#   docker run stepmail stepmail-sender
#   docker run stepmail python -m stepmail_orchestrator migrate
# Build: docker build -t stepmail:dev .

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# ---------------------------------------------------------------- builder
FROM ${PYTHON_IMAGE} AS builder

# Pinned like the Makefile's UV_VERSION.
RUN pip install --no-cache-dir --disable-pip-version-check uv==0.13.9

ENV UV_PROJECT_ENVIRONMENT=/opt/stepmail/venv \
    UV_PYTHON=/usr/local/bin/python3.11 \
    UV_PYTHON_DOWNLOADS=never \
    UV_COMPILE_BYTECODE=1 \
    UV_LINK_MODE=copy

# The five services, the library they share and the `stepmail` command (for a Job that
# applies scenarios and templates); the devstack (embedded Postgres, broker, SMTP
# catcher) stays out of the image.
ARG STEPMAIL_PACKAGES="--package stepmail-ingest --package stepmail-orchestrator --package stepmail-renderer --package stepmail-sender --package stepmail-tracker --package stepmail-cli"

WORKDIR /src

# Third-party dependencies first, from the lock file only, so that a change in the
# code does not reinstall them.
COPY pyproject.toml uv.lock ./
COPY libs/common/pyproject.toml libs/common/
COPY services/ingest/pyproject.toml services/ingest/
COPY services/orchestrator/pyproject.toml services/orchestrator/
COPY services/renderer/pyproject.toml services/renderer/
COPY services/sender/pyproject.toml services/sender/
COPY services/tracker/pyproject.toml services/tracker/
COPY tools/devstack/pyproject.toml tools/devstack/
COPY tools/cli/pyproject.toml tools/cli/
RUN --mount=type=cache,target=/root/.cache/uv \
    uv sync --frozen --no-dev --no-install-workspace ${STEPMAIL_PACKAGES}

# Then the workspace members themselves, installed as ordinary (non-editable)
# packages so the runtime stage needs no source tree.
COPY libs/common/src libs/common/src
COPY services/ingest/src services/ingest/src
COPY services/orchestrator/src services/orchestrator/src
COPY services/renderer/src services/renderer/src
COPY services/sender/src services/sender/src
COPY services/tracker/src services/tracker/src
COPY tools/cli/src tools/cli/src
RUN --mount=type=cache,target=/root/.cache/uv \
    uv sync --frozen --no-dev --no-editable ${STEPMAIL_PACKAGES}

# ---------------------------------------------------------------- runtime
FROM ${PYTHON_IMAGE} AS runtime

LABEL org.opencontainers.image.title="stepmail" \
      org.opencontainers.image.description="Event-driven step mail on Kafka and Postgres" \
      org.opencontainers.image.licenses="Apache-2.0"

RUN groupadd --system --gid 10001 stepmail \
 && useradd --system --uid 10001 --gid 10001 --no-create-home \
        --home-dir /nonexistent --shell /usr/sbin/nologin stepmail \
 && mkdir -p /srv/stepmail/scenarios /srv/stepmail/templates

COPY --from=builder /opt/stepmail/venv /opt/stepmail/venv

ENV PATH=/opt/stepmail/venv/bin:${PATH} \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HTTP_HOST=0.0.0.0 \
    ORCHESTRATOR_SCENARIOS_DIR=/srv/stepmail/scenarios \
    RENDERER_TEMPLATES_DIR=/srv/stepmail/templates

WORKDIR /srv/stepmail
USER 10001:10001

# ingest, orchestrator, renderer, sender, tracker (set HTTP_PORT to match).
EXPOSE 8001 8002 8003 8004 8005

# Liveness only: /healthz never depends on Kafka or SMTP.
HEALTHCHECK --interval=15s --timeout=3s --start-period=60s --retries=3 \
    CMD python -c "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('HTTP_PORT', '8001'), timeout=2)"

CMD ["stepmail-ingest"]
