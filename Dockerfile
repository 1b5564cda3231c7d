# fastdpt on an NVIDIA CUDA + PyTorch base; serves the HTTP API by default, and only with a token:
# from the secret file /run/secrets/fastdpt_token, or from FASTDPT_TOKEN (without either it refuses to start).
#   docker build -t fastdpt .
#   docker run --gpus all -p 8000:8000 -v ./token.txt:/run/secrets/fastdpt_token:ro \
#       -v ~/.cache/fastdpt:/home/fastdpt/.cache/fastdpt fastdpt \
#       fastdpt serve --host 0.0.0.0 --model dpt-hybrid-kitti --device cuda
FROM pytorch/pytorch:2.6.0-cuda12.4-cudnn9-runtime

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    FASTDPT_TOKEN_FILE=/run/secrets/fastdpt_token

WORKDIR /opt/fastdpt
COPY pyproject.toml README.md ./
COPY src ./src
# onnxruntime-gpu brings the CUDA and TensorRT execution providers; "." is this package itself (not pinnable)
# hadolint ignore=DL3013
RUN pip install ".[train,onnx,serve,hub]" onnxruntime-gpu==1.20.1 \
    && useradd --create-home --uid 1000 fastdpt

USER 1000
EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=5s --start-period=120s \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz')"]
CMD ["fastdpt", "serve", "--host", "0.0.0.0", "--port", "8000"]
