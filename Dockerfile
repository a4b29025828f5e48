# fitserve images, one base: `api` (CPU TensorFlow), `worker` (CUDA TensorFlow), `monitoring`
# (Flower, TensorBoard). `docker compose build` builds them all; alone:
#   docker build --target worker --tag fitserve-worker .
# Dependencies come before the code, so a code change rebuilds only the last layers.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS base
ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    FITSERVE_DATA_DIR=/data
# A fixed uid and gid, so files on a data volume shared between hosts have one owner. A named
# volume mounted on /data starts with this folder's owner.
RUN groupadd --system --gid 10001 fitserve \
    && useradd --system --uid 10001 --gid fitserve --create-home --home-dir /home/fitserve \
        --shell /usr/sbin/nologin fitserve \
    && install --directory --owner fitserve --group fitserve /data
WORKDIR /app
COPY pyproject.toml ./
COPY scripts/requirements.py scripts/

FROM base AS api
RUN python scripts/requirements.py api > /tmp/requirements.txt \
    && pip install --requirement /tmp/requirements.txt \
    && rm /tmp/requirements.txt
COPY . .
RUN pip install --no-deps .
USER 10001:10001
EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=10s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=5)"]
CMD ["gunicorn", "--config", "service/gunicorn.conf.py", "--bind", "0.0.0.0:8000", "--workers", "2", "service:create_app()"]

# The CUDA build replaces the CPU one at the same version (scripts/requirements.py), and the
# project goes in with --no-deps, so no second TensorFlow comes along. The NVIDIA container
# toolkit supplies the driver; CUDA and cuDNN come as pip wheels with TensorFlow.
FROM base AS worker
RUN python scripts/requirements.py worker > /tmp/requirements.txt \
    && pip install --requirement /tmp/requirements.txt \
    && rm /tmp/requirements.txt
COPY . .
RUN pip install --no-deps .
USER 10001:10001
# The worker's own node answers a ping from its main process even while its child trains.
HEALTHCHECK --interval=30s --timeout=20s --start-period=60s --retries=3 \
    CMD ["sh", "-c", "celery --app worker.app inspect ping --destination \"celery@$HOSTNAME\" --timeout 10 > /dev/null || exit 1"]
CMD ["celery", "--app", "worker.app", "worker", "--queues", "train", "--concurrency", "1", "--prefetch-multiplier", "1", "--loglevel", "INFO"]

# Flower talks to the broker through Celery's Redis transport, as the project's Celery does.
FROM base AS monitoring
RUN pip install flower==2.2.0 tensorboard==2.21.0 "celery[redis]>=5.4,<6"
USER 10001:10001
EXPOSE 5555 6006
