# wattserve CPU image: non-root, serves the built-in demo repository or one mounted at /models.
#   docker build -t wattserve .
#   docker run -p 8001:8001 wattserve                                    # demo models
#   docker run -p 8001:8001 -v $PWD/models:/models wattserve --repository /models

# Build stage: make the wheel and build the demo repository (needs scikit-learn, skl2onnx, onnx).
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY server server
COPY clients clients
RUN pip install --no-cache-dir --upgrade pip \
 && pip wheel --no-cache-dir --wheel-dir /wheels . \
 && pip install --no-cache-dir "/wheels/wattserve-0.1.0-py3-none-any.whl[demo]" \
 && wattserve demo --demo-dir /demo-repository

# Runtime stage: only what serving needs (no scikit-learn, scipy or onnx).
FROM python:3.11-slim
RUN useradd --create-home --uid 10001 wattserve
COPY --from=build /wheels/wattserve-*.whl /tmp/
RUN pip install --no-cache-dir /tmp/wattserve-*.whl && rm /tmp/wattserve-*.whl
COPY --from=build --chown=wattserve /demo-repository /home/wattserve/demo-repository
USER wattserve
ENV WATTSERVE_HOST=0.0.0.0 \
    WATTSERVE_PORT=8001 \
    WATTSERVE_DEMO_DIR=/home/wattserve/demo-repository
EXPOSE 8001
HEALTHCHECK --interval=10s --timeout=5s --start-period=60s --retries=3 \
    CMD ["wattserve", "health", "--address", "127.0.0.1:8001"]
ENTRYPOINT ["wattserve", "serve"]
