# The Fluidity server image (ECS Fargate runs it; see docs/deployment.md).
#
#   docker build -f deploy/server.Dockerfile -t fluidity-server .      (from the repository root)
#
# Two stages: the project is pip-installed (as CI installs it, without the dev extra) into a
# virtual environment, which alone is copied onto a clean slim image run by a non-root user.

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
    FLUIDITY_LISTEN_PORT=8443 \
    FLUIDITY_HEALTH_PORT=8081
RUN useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin fluidity
COPY --from=build /opt/fluidity /opt/fluidity
USER 10001:10001
# 8443: the mTLS tunnel; 8081: plain-HTTP health check.
EXPOSE 8443 8081
# 200 while serving, 503 while draining (urlopen raises, the check fails).
HEALTHCHECK --interval=15s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request as u; u.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('FLUIDITY_HEALTH_PORT', '8081'), timeout=4)"]
# Certificates come as PEM text in FLUIDITY_SERVER_CERT, FLUIDITY_SERVER_KEY, FLUIDITY_CA_CERT
# (ECS injects them from Secrets Manager) or as paths to mounted files.
ENTRYPOINT ["python", "-m", "fluidity.server"]
