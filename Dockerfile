FROM python:3.11-slim

WORKDIR /app
COPY pyproject.toml README.md ./
COPY engine ./engine
COPY signaling ./signaling
COPY overlays ./overlays
RUN pip install --no-cache-dir -e . \
    && useradd --create-home --uid 10001 livecart \
    && mkdir -p /data && chown livecart /data

USER livecart
ENV LIVECART_HOST=0.0.0.0 LIVECART_DATA_DIR=/data
EXPOSE 8080 8081
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s \
    CMD python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8080/healthz', timeout=2)"
CMD ["livecart", "serve"]
