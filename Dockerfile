# iam-mail-worker: one image for the workers, the ingest consumer, Flower and the `mailworker` CLI.
#   docker build -t iam-mail-worker:0.1.0 .
# Reproducible: the base image is pinned to a patch release, and every Python package, Flower and the
# build backend included, comes from requirements.lock (`make lock`) at its pinned version, checked
# against its hashes. The package itself is built from this source without fetching anything.
FROM python:3.11.13-slim-bookworm AS base
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
COPY requirements.lock /tmp/requirements.lock
# --require-hashes: a dependency missing from the lock, or a file that differs from the one locked,
# fails the build instead of installing something else.
RUN pip install --require-hashes -r /tmp/requirements.lock && rm /tmp/requirements.lock

FROM base AS build
WORKDIR /src
COPY . .
# No build isolation: the build backend is the locked one installed above, not the newest on the index.
RUN pip wheel --no-deps --no-build-isolation --wheel-dir /wheels .

FROM base
RUN useradd --system --uid 10001 --user-group --home-dir /app --create-home mailworker
COPY --from=build /wheels /wheels
# --no-deps: the dependencies are the locked ones; pip check fails the build if the lock lacks one.
RUN pip install --no-deps --no-index /wheels/*.whl && rm -rf /wheels && pip check
USER mailworker
WORKDIR /app
# Configuration comes from MAILWORKER_* variables (see deploy/.env.example). The compose file sets the
# command per service: `worker --queues ...`, `ingest`, or Flower.
ENTRYPOINT ["mailworker"]
CMD ["worker"]
