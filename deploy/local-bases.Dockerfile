# Local stand-ins for the public images that the Dockerfile and docker-compose.yml use
# by default, made of Debian packages, for a machine that reaches Debian's mirror but no
# container registry (the CI). scripts/compose-check builds each target once, on
# DEBIAN_IMAGE (Debian bookworm from debootstrap, made an image by `docker import`),
# and keeps it:
#
#   target   stands in for      as
#   python   python:3.11-slim   the Dockerfile's PYTHON_IMAGE
#   redis    redis:7-alpine     compose's REDIS_IMAGE
#   nginx    nginx:1.27-alpine  compose's NGINX_IMAGE
#
# Each keeps what compose relies on in the public image: the command on PATH, the
# healthcheck's tools and the same defaults where compose does not set them.

ARG DEBIAN_IMAGE

FROM ${DEBIAN_IMAGE} AS python
ARG DEBIAN_FRONTEND=noninteractive
# python3-venv: the Dockerfile installs fleetbreaker into a venv, on either base.
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv \
    && apt-get clean && rm -rf /var/lib/apt/lists/*

FROM ${DEBIAN_IMAGE} AS redis
ARG DEBIAN_FRONTEND=noninteractive
RUN apt-get update \
    && apt-get install -y --no-install-recommends redis-server \
    && apt-get clean && rm -rf /var/lib/apt/lists/*
# As the official image: as user redis, and reachable from other containers (its
# build turns protected mode off; compose passes --protected-mode no as well).
USER redis
WORKDIR /var/lib/redis
EXPOSE 6379
CMD ["redis-server", "--protected-mode", "no"]

FROM ${DEBIAN_IMAGE} AS nginx
ARG DEBIAN_FRONTEND=noninteractive
# wget: the lb's healthcheck, as busybox's wget in nginx:alpine.
RUN apt-get update \
    && apt-get install -y --no-install-recommends nginx wget \
    && apt-get clean && rm -rf /var/lib/apt/lists/*
EXPOSE 80
# As the official image: in the foreground, errors on stderr (deploy/nginx.conf sets
# no error_log, and Debian's default is a file).
CMD ["nginx", "-e", "stderr", "-g", "daemon off;"]
