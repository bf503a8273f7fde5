FROM python:3.11-slim

WORKDIR /app
COPY pyproject.toml README.md ./
COPY engine ./engine
COPY signaling ./signaling
COPY overlays ./overlays
RUN pip install --no-cache-dir . \
    && useradd --create-home --uid 10001 livecart \
    && mkdir -p /data && chown livecart /data

# The secret, admin key, rooms, catalog, orders and purchase log (SQLite): a volume, so they
# outlive the container (declared after the chown, so a new volume is owned by livecart).
VOLUME /data
USER livecart
ENV LIVECART_HOST=0.0.0.0 LIVECART_DATA_DIR=/data
# HTTP and websocket. WebRTC media uses one UDP socket per peer on an ephemeral port (no port
# range to publish): run with --network host for media (README, "Docker").
EXPOSE 8080 8081
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s \
    CMD python -c "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('LIVECART_HTTP_PORT', '8080'), timeout=2)"
CMD ["livecart", "serve"]
