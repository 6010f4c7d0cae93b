# The gateway with both backends, configured by GATEWAY_* environment variables only.
#
#   docker build -t gateway .
#   docker run -p 8000:8000 -v gateway-data:/data -e GATEWAY_TOKENS_FILE=/run/secrets/tokens.json ...
#
# It listens on 0.0.0.0, and the gateway refuses to serve a non-loopback address without
# tokens: give it GATEWAY_TOKENS_FILE, or GATEWAY_ALLOW_ANONYMOUS=true where the network
# around it is trusted.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/gateway
WORKDIR /src
# Dependencies first, in their own layer, so that a change to the code alone reuses it.
COPY pyproject.toml README.md ./
RUN mkdir gateway && touch gateway/__init__.py \
    && /opt/gateway/bin/pip install '.[s3]' \
    && /opt/gateway/bin/pip uninstall --yes gateway
COPY gateway ./gateway
RUN /opt/gateway/bin/pip install --no-deps .

FROM ${PYTHON_IMAGE}
RUN groupadd --system --gid 10001 gateway \
    && useradd --system --uid 10001 --gid gateway --home-dir /data --no-create-home gateway \
    && install -d -o gateway -g gateway /data
COPY --from=build /opt/gateway /opt/gateway
ENV PATH=/opt/gateway/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    GATEWAY_HOST=0.0.0.0 \
    GATEWAY_PORT=8000 \
    GATEWAY_DATA_DIR=/data
USER 10001:10001
WORKDIR /data
VOLUME ["/data"]
EXPOSE 8000
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=15s --timeout=5s --start-period=10s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('GATEWAY_PORT', '8000'), timeout=4)"]
CMD ["gateway", "serve"]
