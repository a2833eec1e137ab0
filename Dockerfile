# vast-queue-scaler: the controller (`run`, the default) and the local emulator (`emulator`).
#   docker build -t vast-queue-scaler .
#   docker run --rm -e VAST_API_KEY -v "$PWD/config.yaml:/etc/vast-queue-scaler/config.yaml:ro" \
#     -p 127.0.0.1:9464:9464 vast-queue-scaler run --config /etc/vast-queue-scaler/config.yaml

FROM python:3.11-slim AS build
# A virtualenv so the final stage copies one directory and no build leftovers.
RUN python -m venv /opt/vast-queue-scaler
WORKDIR /src
COPY pyproject.toml README.md constraints.txt ./
COPY controller ./controller
# Exactly the locked versions (constraints.txt), setuptools included, so the image is what CI tested.
RUN /opt/vast-queue-scaler/bin/pip install --no-cache-dir --disable-pip-version-check -c constraints.txt setuptools \
 && /opt/vast-queue-scaler/bin/pip install --no-cache-dir --disable-pip-version-check -c constraints.txt \
      --no-build-isolation . \
 && /opt/vast-queue-scaler/bin/pip uninstall --yes pip setuptools

FROM python:3.11-slim
ARG UID=10001
RUN groupadd --system --gid "${UID}" vqs \
 && useradd --system --uid "${UID}" --gid vqs --no-create-home --home-dir /nonexistent \
      --shell /usr/sbin/nologin vqs \
 && install -d -o vqs -g vqs -m 0700 /var/lib/vast-queue-scaler
COPY --from=build /opt/vast-queue-scaler /opt/vast-queue-scaler

# Inside a container the HTTP server must listen beyond loopback for probes and Prometheus
# (set VQS_METRICS_HOST=127.0.0.1 to keep it private).
ENV PATH=/opt/vast-queue-scaler/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    VQS_METRICS_HOST=0.0.0.0
# The image's only writable path. The session ledger's default place, state/, is relative to it:
# mount a volume here to keep the ledger across restarts.
WORKDIR /var/lib/vast-queue-scaler
VOLUME ["/var/lib/vast-queue-scaler"]
USER ${UID}:${UID}
EXPOSE 9464

# /healthz answers 200 while the process runs; the port follows VQS_METRICS_PORT.
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s --retries=3 \
  CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('VQS_METRICS_PORT', '9464'), timeout=4)"]

ENTRYPOINT ["vast-queue-scaler"]
CMD ["run"]
