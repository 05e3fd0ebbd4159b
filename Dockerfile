# The gateway image: fleetbreaker[gateway] and its dependencies in a virtual environment, no
# compiler, no pip, no source tree, run as an unprivileged user. docker-compose.yml
# runs it three times behind nginx, and once more as the demo upstream. Needs BuildKit
# (the default builder of `docker build` and `docker compose` since Docker 23).
#
# Two build arguments let it build where neither Docker Hub nor the package index can
# be reached (scripts/compose-check does, in CI):
#   PYTHON_IMAGE  the base of every stage: python:3.11-slim, or any Debian with python3
#                 (3.11 or later), its venv module and useradd.
#   WHEELS_IMAGE  where the wheels come from: an image whose /wheels holds fleetbreaker's
#                 wheel and its dependencies'. By default, the stage below builds them
#                 with pip from the package index.
ARG PYTHON_IMAGE=python:3.11-slim
ARG WHEELS_IMAGE=wheels-from-index

FROM ${PYTHON_IMAGE} AS wheels-from-index
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
# The pip of a venv: every base has it, where a system pip may be missing or refuse
# to install (Debian's python3 has none, PEP 668).
RUN python3 -m venv /opt/pip
WORKDIR /src
COPY pyproject.toml README.md ./
COPY breaker breaker
COPY lua lua
COPY app app
# Wheels for fleetbreaker and every dependency of it and of its gateway (all of them
# ship manylinux wheels).
RUN /opt/pip/bin/pip wheel --wheel-dir /wheels '.[gateway]'

FROM ${WHEELS_IMAGE} AS wheels

FROM ${PYTHON_IMAGE} AS venv
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python3 -m venv /opt/fleetbreaker
RUN --mount=type=bind,from=wheels,source=/wheels,target=/wheels \
    /opt/fleetbreaker/bin/pip install --no-index --find-links /wheels 'fleetbreaker[gateway]' \
    && /opt/fleetbreaker/bin/pip uninstall --yes pip setuptools

FROM ${PYTHON_IMAGE}
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PATH=/opt/fleetbreaker/bin:$PATH
RUN useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin fleetbreaker
COPY --from=venv /opt/fleetbreaker /opt/fleetbreaker
USER 10001
# The proxy. The admin listener (:8001: admin API, dashboard, /metrics) stays on the
# container's loopback unless the command says `--admin-host 0.0.0.0`, as compose's
# does, publishing it on the host's loopback only.
EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=3s --start-period=15s --retries=3 \
    CMD ["python", "-c", "import sys, urllib.request; sys.exit(urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=2).status != 200)"]
ENTRYPOINT ["fleetbreaker"]
CMD ["serve", "--host", "0.0.0.0", "--port", "8000", "--workers", "2"]
