# syntax=docker/dockerfile:1
# The b2l pack simulator: one simulated pack and its BMS (SPEC section 6), `b2l sim pack`, on a
# serial line served over TCP (Pillar 1) or a CAN bus (Pillar 2). Arguments are the command's.
#   docker buildx build --platform linux/amd64,linux/arm64 -f docker/sim.Dockerfile -t b2l-sim .
# Pillar 1 (the default command): a real-time pack on tcp:0.0.0.0:5000 for an edge container
# that opens socket://<this container>:5000; the scenario is mounted:
#   docker run -d --network hil --name sim-serial -v $PWD/examples/scenario-pack.yaml:/etc/b2l/scenario.yaml:ro \
#     b2l-sim --serial tcp:0.0.0.0:5000 --scenario /etc/b2l/scenario.yaml --realtime 1
# Pillar 2: --can udp_multicast:239.74.163.10 --can-option hop_limit=1, only on an isolated
# container network (compose.hil.yml, docs/hil-bench.md), or --can socketcan:vcan0 with
# --network host on a bench machine.
# The build stage is the same in docker/{cloud,edge,sim}.Dockerfile (tests/unit/test_containers.py).

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
    PIP_DISABLE_PIP_VERSION_CHECK=1
RUN groupadd --system --gid ${B2L_UID} b2l \
    && useradd --system --uid ${B2L_UID} --gid b2l \
       --home-dir /var/lib/b2l-sim --create-home --shell /usr/sbin/nologin b2l
# python-can[multicast]: msgpack, which the udp_multicast interface needs
RUN --mount=type=bind,from=build,source=/wheels,target=/wheels \
    pip install --no-cache-dir --no-index --find-links=/wheels b2l "python-can[multicast]" \
    && b2l sim pack --help >/dev/null
USER b2l
WORKDIR /var/lib/b2l-sim
EXPOSE 5000
# SIGTERM ends the run like Ctrl-C: logs closed, summary printed, exit code 130
STOPSIGNAL SIGTERM
ENTRYPOINT ["b2l", "sim", "pack"]
CMD ["--serial", "tcp:0.0.0.0:5000", "--realtime", "1"]
