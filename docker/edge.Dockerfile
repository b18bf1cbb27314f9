# syntax=docker/dockerfile:1
# The b2l edge runtime: one container per battery, beside the pack (SPEC section 6).
# Multi-arch (python:3.11-slim is published for both):
#   docker buildx build --platform linux/amd64,linux/arm64 -f docker/edge.Dockerfile -t b2l-edge .
# Run (configuration and state from the host; docs/edge-runtime.md "Operations"):
#   docker run -d --name b2l-edge --restart on-failure \
#     -v /etc/b2l/edge.toml:/etc/b2l/edge.toml:ro -v b2l-edge:/var/lib/b2l-edge \
#     --device /dev/ttyUSB0 --group-add dialout \      # Pillar 1 (serial)
#     --network host \                                 # Pillar 2 (socketcan: can0 is the host's)
#     -e B2L_EDGE_UPLINK__SECRET_FILE=/run/secrets/device-secret b2l-edge
# The build needs only the context (repo root); no compiler: every dependency ships wheels for
# amd64 and arm64. The build stage is the same in docker/{cloud,edge,sim}.Dockerfile.

ARG PYTHON_IMAGE=python:3.11-slim

FROM ${PYTHON_IMAGE} AS build
WORKDIR /src
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
COPY pyproject.toml README.md ./
COPY twin ./twin
COPY edge_runtime ./edge_runtime
COPY cloud ./cloud
COPY simulators ./simulators
COPY hil ./hil
COPY b2l ./b2l
RUN pip wheel --wheel-dir /wheels . "python-can[multicast]"

FROM ${PYTHON_IMAGE}
ARG B2L_UID=10001
ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    B2L_EDGE_LOGGING__FORMAT=json
RUN groupadd --system --gid ${B2L_UID} b2l \
    && useradd --system --uid ${B2L_UID} --gid b2l --groups dialout \
       --home-dir /var/lib/b2l-edge --create-home --shell /usr/sbin/nologin b2l \
    && install -d -o root -g b2l -m 0750 /etc/b2l \
    && install -d -o b2l -g b2l -m 0750 /var/lib/b2l-edge
# python-can[multicast]: msgpack, which the udp_multicast interface needs (compose.hil.yml)
RUN --mount=type=bind,from=build,source=/wheels,target=/wheels \
    pip install --no-cache-dir --no-index --find-links=/wheels b2l "python-can[multicast]" \
    && b2l --help >/dev/null
USER b2l
WORKDIR /var/lib/b2l-edge
VOLUME ["/var/lib/b2l-edge"]
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=30s --timeout=10s --start-period=30s --retries=3 \
    CMD ["b2l", "edge", "status", "--config", "/etc/b2l/edge.toml"]
ENTRYPOINT ["b2l", "edge", "run", "--config", "/etc/b2l/edge.toml"]
