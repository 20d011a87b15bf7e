# qfleet image for Ray clusters: the same image runs the head (driver + learner) and workers.
# A slim Python base keeps the image small; `pip install .` brings PyPI's default torch
# build, which carries its own CUDA runtime for GPU learner nodes (the host needs only the
# NVIDIA driver). Ray is pinned in pyproject.toml so every node runs the same Ray.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1

RUN useradd --create-home --uid 1000 qfleet
WORKDIR /home/qfleet/app

# Dependencies first, so code changes do not rebuild the heavy layer.
COPY --chown=qfleet:qfleet pyproject.toml README.md ./
COPY --chown=qfleet:qfleet qfleet ./qfleet
RUN pip install --no-cache-dir .
COPY --chown=qfleet:qfleet configs ./configs

USER 1000:1000
ENTRYPOINT ["qfleet"]
CMD ["--help"]
