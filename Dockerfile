# One image for every Lambent role; the command picks the role (serve, worker, streams, scheduler).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 \
    LAMBENT_CONFIG=/app/config.yaml LAMBENT_DATA_DIR=/var/lib/lambent LAMBENT_FUNCTIONS_DIR=/app/functions

# The jail around every sandbox: bubblewrap (namespaces), setpriv (util-linux: the sandbox's own user),
# libseccomp (its system-call filter).
RUN apt-get update && apt-get install -y --no-install-recommends bubblewrap util-linux libseccomp2 \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /app
COPY pyproject.toml README.md ./
COPY runtime ./runtime
COPY scripts/docker-entrypoint.sh /usr/local/bin/lambent-entrypoint
# pip compiles the package, so sandboxes load the bootstrap from its bytecode.
RUN pip install . && mkdir -p /var/lib/lambent && chmod 0700 /var/lib/lambent
COPY config.yaml ./
COPY functions ./functions

# Root in the container, with the few privileges docker-compose.yml grants: the server creates each sandbox's
# namespaces and cgroup and hands it an unprivileged user of its own (uid 993), without capabilities.
USER root
EXPOSE 8080
ENTRYPOINT ["lambent-entrypoint"]
CMD ["lambent", "serve", "--host", "0.0.0.0", "--port", "8080"]
