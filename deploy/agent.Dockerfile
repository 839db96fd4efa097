# The Fluidity agent image (for running the local proxy in a container; see deploy/compose.yaml).
#
#   docker build -f deploy/agent.Dockerfile -t fluidity-agent .       (from the repository root)
#
# Same two stages as the server image. In a container the proxy must listen on 0.0.0.0 to be
# reachable, so the agent then requires FLUIDITY_PROXY_AUTH (user:password).

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/fluidity
WORKDIR /src
COPY pyproject.toml README.md ./
COPY fluidity ./fluidity
RUN /opt/fluidity/bin/pip install .

FROM ${PYTHON_IMAGE}
ENV PATH=/opt/fluidity/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    FLUIDITY_LISTEN_HOST=0.0.0.0 \
    FLUIDITY_LISTEN_PORT=8080
RUN useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin fluidity
COPY --from=build /opt/fluidity /opt/fluidity
USER 10001:10001
# The local HTTP proxy (and its /healthz).
EXPOSE 8080
# 200 while the tunnel is up (or the server sleeps, with the control plane), 503 otherwise;
# with proxy_auth set, /healthz wants the credentials too.
HEALTHCHECK --interval=15s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import base64, os, urllib.request as u; a = os.environ.get('FLUIDITY_PROXY_AUTH'); h = {'Proxy-Authorization': 'Basic ' + base64.b64encode(a.encode()).decode()} if a else {}; u.urlopen(u.Request('http://127.0.0.1:%s/healthz' % os.environ.get('FLUIDITY_LISTEN_PORT', '8080'), headers=h), timeout=4)"]
ENTRYPOINT ["python", "-m", "fluidity.agent"]
