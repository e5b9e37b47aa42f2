# The agent-fleet daemon: reconcile loop, webhook receiver, agent API and resync.
#   docker build -t agent-fleet .
#   docker run -v fleet-state:/var/lib/agent-fleet -v ./fleet.toml:/etc/agent-fleet/fleet.toml:ro \
#     --env-file agent-fleet.env -p 8080:8080 agent-fleet
# The configuration must set webhook.bind = "0.0.0.0" and store.path = "/var/lib/agent-fleet".
FROM python:3.11-slim-bookworm AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY reconciler ./reconciler
COPY controllers ./controllers
COPY webhook ./webhook
RUN pip wheel --no-cache-dir --wheel-dir /wheels .

FROM python:3.11-slim-bookworm
# git for the executor's checks, ssh for hosts reached over ssh; both from Debian 12.
RUN apt-get update \
    && apt-get install -y --no-install-recommends git=1:2.39.* openssh-client=1:9.2p1-* \
    && rm -rf /var/lib/apt/lists/*
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir --no-index --find-links=/wheels /wheels/agent_fleet-*.whl \
    && rm -rf /wheels \
    && groupadd --system --gid 10001 agent-fleet \
    && useradd --system --uid 10001 --gid 10001 --home-dir /var/lib/agent-fleet --create-home agent-fleet
USER 10001:10001
WORKDIR /var/lib/agent-fleet
VOLUME ["/var/lib/agent-fleet"]
EXPOSE 8080
# SIGTERM lets in-flight reconciles finish (loop.shutdown_grace), then exits 0.
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8080/healthz', timeout=4)"]
ENTRYPOINT ["agent-fleet"]
CMD ["run", "--config", "/etc/agent-fleet/fleet.toml", "--log-json"]
