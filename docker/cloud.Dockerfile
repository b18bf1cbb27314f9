# syntax=docker/dockerfile:1
# The b2l cloud: REST API (uvicorn) and, with B2L_MQTT_URL, the MQTT consumer and command
# publisher (SPEC section 6). Stateless: the twin state lives in the database.
#   docker buildx build --platform linux/amd64,linux/arm64 -f docker/cloud.Dockerfile -t b2l-cloud .
# Run (settings are B2L_* variables, cloud/settings.py; the image defaults to production mode,
# which refuses the development JWT secret):
#   docker run -d --name b2l-cloud -p 127.0.0.1:8000:8000 \
#     -e B2L_DATABASE_URL=postgresql+psycopg://b2l:PASSWORD@db:5432/b2l \
#     -e B2L_MQTT_URL=mqtt://cloud:PASSWORD@broker:1883 -e B2L_JWT_SECRET=... b2l-cloud
# Other commands of the same image: --entrypoint b2l ... cloud migrate | create-user | hil provision.
# The build stage is the same in docker/{cloud,edge,sim}.Dockerfile (tests/unit/test_containers.py
# checks it): one wheel set, no compiler (every dependency ships wheels for amd64 and arm64).

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
    B2L_MODE=production \
    B2L_LOG_JSON=true
RUN groupadd --system --gid ${B2L_UID} b2l \
    && useradd --system --uid ${B2L_UID} --gid b2l \
       --home-dir /var/lib/b2l --create-home --shell /usr/sbin/nologin b2l
RUN --mount=type=bind,from=build,source=/wheels,target=/wheels \
    pip install --no-cache-dir --no-index --find-links=/wheels b2l \
    && b2l cloud serve --help >/dev/null
USER b2l
# ./b2l-data (the SQLite default and MQTT dead letters) resolves here
WORKDIR /var/lib/b2l
EXPOSE 8000
STOPSIGNAL SIGTERM
# /readyz: the database answers and is migrated (503 otherwise). No curl in slim: urllib, whose
# HTTPError (a 503) or URLError exits 1. Plain HTTP: with B2L_TLS_* set, override it.
HEALTHCHECK --interval=15s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import urllib.request as u; u.urlopen('http://127.0.0.1:8000/readyz', timeout=4)"]
ENTRYPOINT ["b2l", "cloud", "serve", "--host", "0.0.0.0", "--port", "8000"]
