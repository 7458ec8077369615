# cms-chatops: one image for every role; the command picks it.
#   docker build -t cms-chatops .
#   docker run --rm cms-chatops            # `cmsbot worker` (the default)
#   docker run --rm cms-chatops bot        # the Slack app
#   docker run --rm cms-chatops lab --host 0.0.0.0 --port 5985 --topology-out /shared/topology.yaml
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore

# A fixed numeric uid/gid, so that `runAsNonRoot` checks and file ownership on
# mounted volumes are predictable.
ARG UID=10001
ARG GID=10001
RUN groupadd --system --gid "${GID}" cmsbot \
 && useradd --system --uid "${UID}" --gid cmsbot --home-dir /home/cmsbot --create-home \
        --shell /usr/sbin/nologin cmsbot

WORKDIR /src
# The app's dependencies exactly as locked (with hashes), then the app itself
# as a regular (non-editable) install without extras: the code lands in
# site-packages, so the source tree is not needed afterwards.
COPY requirements/app.txt requirements/app.txt
RUN pip install --no-cache-dir --require-hashes -r requirements/app.txt
COPY pyproject.toml README.md ./
COPY cms/ cms/
COPY hub/ hub/
COPY bot/ bot/
COPY workers/ workers/
COPY lab/ lab/
RUN pip install --no-cache-dir --no-deps --no-build-isolation . \
 && rm -rf /src

# /shared is where `cmsbot lab` writes its topology in docker-compose.yml's
# demo profile. It exists here, owned by the app user, so that a new named
# volume mounted on it starts writable for that user (Docker copies a
# directory's ownership into an empty volume the first time it is mounted).
# /etc/cmsbot is where the topology file is mounted read-only.
RUN mkdir -p /shared /etc/cmsbot \
 && chown cmsbot:cmsbot /shared

WORKDIR /home/cmsbot
USER ${UID}:${GID}

# The Slack app's HTTP endpoint (CMSBOT_HTTP_PORT), the lab's WS-Management port, and
# /metrics, /healthz and /readyz of the bot and the workers when CMSBOT_METRICS_PORT is
# 9100 (docker-compose.yml sets it and asks /readyz in its healthchecks; no HEALTHCHECK
# here: the same image runs the lab and one-off commands, which serve no such port).
EXPOSE 3000 5985 9100

ENTRYPOINT ["cmsbot"]
CMD ["worker"]
