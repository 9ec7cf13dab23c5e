# iam-mail-worker: one image for the workers, the ingest consumer, Flower and the `mailworker` CLI.
#   docker build -t iam-mail-worker .
# Stage 1 builds a wheel from pyproject.toml; stage 2 installs it on a slim base and runs as a non-root user.
FROM python:3.11-slim AS build
WORKDIR /src
COPY . .
RUN pip wheel --no-cache-dir --wheel-dir /wheels ".[monitor]"

FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
RUN useradd --system --uid 10001 --user-group --home-dir /app --create-home mailworker
COPY --from=build /wheels /wheels
RUN pip install --no-index --find-links=/wheels "iam-mail-worker[monitor]" && rm -rf /wheels
USER mailworker
WORKDIR /app
# Configuration comes from MAILWORKER_* variables (see deploy/.env.example). The compose file sets the
# command per service: `worker --queues ...`, `ingest`, or Flower.
ENTRYPOINT ["mailworker"]
CMD ["worker"]
