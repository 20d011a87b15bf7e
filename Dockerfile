# qfleet image for Ray clusters: the launcher's (`ray up`) and KubeRay's nodes all run it,
# the head (driver + learner) and the actor workers alike. Two variants, one build arg:
#   docker build -t REGISTRY/qfleet:0.1.0-cpu .                      # CPU nodes, laptops
#   docker build --build-arg VARIANT=gpu -t REGISTRY/qfleet:0.1.0-gpu .  # a GPU learner
# The base is Ray's own image: its Ray matches pyproject's pin, and it carries what the
# launcher and the autoscaler need inside the container (rsync, openssh-client, boto3,
# google-api-python-client), sudo for the `ray` user (uid 1000, gid 100), and no
# ENTRYPOINT: the launcher starts containers as `docker run … IMAGE bash`.
ARG VARIANT=cpu
FROM rayproject/ray:2.60.0-py311-${VARIANT}
ARG VARIANT

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# Made by the image's user (ray, 1000:100) before WORKDIR names it: a builder without
# BuildKit (the classic builder, kaniko) creates a missing WORKDIR as root, and `pip install .`
# could not write its build files there.
RUN mkdir -p /home/ray/qfleet
WORKDIR /home/ray/qfleet

# The tested torch, pinned: the CPU build for the cpu variant; for gpu, PyPI's default build
# (CUDA 13: hosts need NVIDIA driver >= 580; for an older driver pass
# --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cu128).
ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX=""
RUN index="${TORCH_INDEX:-$([ "$VARIANT" = cpu ] && echo https://download.pytorch.org/whl/cpu || echo https://pypi.org/simple)}" \
    && pip install --no-cache-dir --index-url "$index" "torch==${TORCH_VERSION}"

# The other dependencies, from pyproject.toml alone: editing the code does not reinstall them.
COPY --chown=1000:100 pyproject.toml ./
RUN python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" > /tmp/requirements.txt \
    && pip install --no-cache-dir -r /tmp/requirements.txt \
    && rm /tmp/requirements.txt

# The code and the configs (`qfleet train configs/…` runs from this directory).
COPY --chown=1000:100 README.md ./
COPY --chown=1000:100 qfleet ./qfleet
RUN pip install --no-cache-dir --no-deps .
COPY --chown=1000:100 qfleet/configs ./configs

USER 1000:100
