# One image for every Lambent role; the command picks the role (serve, worker, streams, scheduler).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 \
    LAMBENT_CONFIG=/app/config.yaml LAMBENT_DATA_DIR=/var/lib/lambent LAMBENT_FUNCTIONS_DIR=/app/functions

WORKDIR /app
COPY pyproject.toml README.md ./
COPY runtime ./runtime
RUN pip install . && useradd --system --uid 10001 --home-dir /app lambent \
    && mkdir -p /var/lib/lambent && chown lambent /var/lib/lambent
COPY config.yaml ./
COPY functions ./functions

USER lambent
EXPOSE 8080
CMD ["lambent", "serve", "--host", "0.0.0.0", "--port", "8080"]
