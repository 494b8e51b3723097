# fashion-recs Spark image: the official apache/spark image plus the Python that the pipeline's
# Spark stages need on the executors, for the `spark-master` and `spark-worker` services of
# docker-compose.yaml (`docker compose build`); by hand, from the repository root:
#
#   docker build -f docker/spark.Dockerfile -t fashion-recs-spark:local .
#
# The Spark version here must equal the pyspark pin in requirements.txt: the driver (pyspark in
# the Airflow image) and the cluster speak one protocol (tests/test_docker_compose.py checks it).
#
# Why not the official image alone: the Spark stages run Python on the executors (Arrow-backed
# pandas functions and Parquet writes), and PySpark refuses executors whose Python minor version
# differs from the driver's. The driver is the Airflow image's Python 3.11; the official image's
# python3 is Ubuntu's, and the pinned numpy/pandas need 3.11 or newer. So the executors get a
# Python 3.11 of their own (a standalone build that uv installs, whatever the Ubuntu release)
# with pyarrow, numpy and pandas at the versions requirements.txt pins, first on PATH, where
# Spark looks for `python3` (the driver does not set PYSPARK_PYTHON on a cluster).
FROM apache/spark:4.2.0

# Python of the executors: must be the Airflow image's (docker/Dockerfile: python3.11).
ARG PYTHON_VERSION=3.11
# uv, from PyPI, only to fetch that Python and install the pins.
ARG UV_VERSION=0.13.8

USER root

COPY requirements.txt /tmp/fashion-recs-requirements.txt

# `pip --target` installs uv beside the system Python without touching it (and without the
# refusal of an externally managed Python that a plain `pip install` meets on newer Ubuntu).
RUN set -eu; \
    if ! python3 -m pip --version >/dev/null 2>&1; then \
        apt-get update; \
        apt-get install -y --no-install-recommends python3 python3-pip; \
        rm -rf /var/lib/apt/lists/*; \
    fi; \
    python3 -m pip install --no-cache-dir --target /opt/uv "uv==${UV_VERSION}"; \
    export UV_PYTHON_INSTALL_DIR=/opt/python UV_NO_CACHE=1; \
    /opt/uv/bin/uv venv --python "${PYTHON_VERSION}" /opt/spark-python; \
    grep -i -E '^(pyarrow|numpy|pandas|python-dateutil|tzdata|six)==' \
        /tmp/fashion-recs-requirements.txt > /tmp/executor-requirements.txt; \
    /opt/uv/bin/uv pip install --python /opt/spark-python/bin/python \
        -r /tmp/executor-requirements.txt; \
    /opt/spark-python/bin/python -c "import pyarrow, numpy, pandas"; \
    rm -rf /opt/uv /tmp/fashion-recs-requirements.txt /tmp/executor-requirements.txt

ENV PATH=/opt/spark-python/bin:${PATH} \
    PYSPARK_PYTHON=/opt/spark-python/bin/python

# docker-compose.yaml runs Spark as the Airflow containers' user (AIRFLOW_UID, group 0), so that
# the Parquet the executors write into the shared data directory belongs to that user too: the
# directories Spark writes its own files to must be writable by group 0.
RUN set -eu; \
    mkdir -p /opt/spark/work /opt/spark/logs /opt/spark/work-dir; \
    chgrp -R 0 /opt/spark/work /opt/spark/logs /opt/spark/work-dir; \
    chmod -R g+rwX /opt/spark/work /opt/spark/logs /opt/spark/work-dir

USER spark
