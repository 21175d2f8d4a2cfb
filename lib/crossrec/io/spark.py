"""The one place that builds Spark sessions.

Embedded (``spark_master="local[*]"``): the Delta jars come through ``spark.jars.packages`` via
``configure_spark_with_delta_pip`` (resolved from Maven Central into ``~/.ivy2`` on first use), with any
``spark.jars.packages`` of the config added (e.g. ``org.apache.hadoop:hadoop-aws`` for an ``s3a://`` lake).
On a cluster (``spark_master=None``, i.e. the master comes from ``spark-submit --master``): the jars are the
cluster's own (``--packages io.delta:delta-spark_2.13:<version>`` or a platform that ships Delta); this
factory only adds the Delta SQL extension and catalog.
On Spark Connect (``spark_remote="sc://host:port"``): the server holds the jars and the Delta extension; this
factory sets only runtime SQL settings. The jobs use DataFrame and SQL APIs only (no ``SparkContext``, no
``delta.tables``), so any Connect server with Delta's SQL extension runs them; no Delta Connect plugin is needed.
"""
from __future__ import annotations

import logging
import os
from typing import Mapping

log = logging.getLogger(__name__)

DELTA_CONF = {
    "spark.sql.extensions": "io.delta.sql.DeltaSparkSessionExtension",
    "spark.sql.catalog.spark_catalog": "org.apache.spark.sql.delta.catalog.DeltaCatalog",
}

LOCAL_CONF = {
    # one machine: no UI, UTC everywhere. 64 shuffle partitions that adaptive execution coalesces to ~64 MB each:
    # a small run gets one or two, a 1M-user clean (20M rows) gets partitions that fit the heap (with 8 its
    # deduplication task ran out of a 4g heap; bench scale)
    "spark.sql.shuffle.partitions": "64",
    "spark.sql.adaptive.coalescePartitions.enabled": "true",
    "spark.default.parallelism": "4",
    "spark.ui.enabled": "false",
    "spark.ui.showConsoleProgress": "false",
    "spark.driver.memory": "6g",
    "spark.sql.session.timeZone": "UTC",
    "spark.sql.adaptive.enabled": "true",
    "spark.databricks.delta.snapshotPartitions": "2",
    "spark.sql.sources.parallelPartitionDiscovery.parallelism": "2",
    "spark.driver.extraJavaOptions": "-Duser.timezone=UTC",
    "spark.executor.extraJavaOptions": "-Duser.timezone=UTC",
}


# the settings a Connect client may set on its session (the rest are the server's)
RUNTIME_CONF = ("spark.sql.shuffle.partitions", "spark.sql.adaptive.coalescePartitions.enabled",
                "spark.sql.adaptive.enabled", "spark.sql.session.timeZone")


def build_spark(
    app_name: str = "crossrec",
    master: str | None = "local[*]",
    conf: Mapping[str, str] | None = None,
    remote: str | None = None,
):
    """Return a SparkSession with Delta Lake enabled.

    Args:
        app_name: Spark application name.
        master: ``local[*]`` (embedded: Delta jars from Maven) or ``None`` to keep the master and jars
            given by ``spark-submit`` on a cluster.
        conf: extra settings applied last (override the defaults above).
        remote: a Spark Connect URL (``sc://host:port``); ``master`` is then ignored and only runtime SQL
            settings are sent.
    """
    from pyspark.sql import SparkSession

    if remote:
        return _connect(app_name, remote, conf or {})
    builder = SparkSession.builder.appName(app_name)
    settings = dict(DELTA_CONF)
    if master is not None:
        settings.update(LOCAL_CONF)
    settings.update(conf or {})
    packages = [p for p in settings.pop("spark.jars.packages", "").split(",") if p.strip()] if master is not None else []
    for k, v in settings.items():
        builder = builder.config(k, v)
    if master is not None:
        from delta import configure_spark_with_delta_pip

        builder = configure_spark_with_delta_pip(builder.master(master), extra_packages=packages)
    os.environ.setdefault("PYSPARK_PYTHON", _python())
    spark = builder.getOrCreate()
    spark.sparkContext.setLogLevel("WARN")
    log.info("spark %s master=%s", spark.version, spark.sparkContext.master)
    return spark


def with_object_store(conf: Mapping[str, str], uris: list[str | None], embedded: bool) -> dict[str, str]:
    """``conf`` plus what Spark needs for the object stores ``uris`` name: for ``s3a://``, Hadoop's S3A connector
    (``hadoop-aws`` of the installed Hadoop, added to ``spark.jars.packages`` on an embedded session) and, when
    ``AWS_ENDPOINT_URL`` names an S3-compatible store, its endpoint with path-style access (the variable the other
    clients read, see :mod:`crossrec.io.lakefs`). Settings already in ``conf`` win."""
    out = dict(conf)
    if not any(str(u or "").startswith("s3a://") for u in uris):
        return out
    if embedded:
        aws = f"org.apache.hadoop:hadoop-aws:{hadoop_version()}"
        have = out.get("spark.jars.packages", "")
        if "hadoop-aws" not in have:
            out["spark.jars.packages"] = ",".join(p for p in (have, aws) if p)
    from crossrec.io.lakefs import aws_region, s3_endpoint

    endpoint, region = s3_endpoint(), aws_region()
    if endpoint:
        out.setdefault("spark.hadoop.fs.s3a.endpoint", endpoint)
        out.setdefault("spark.hadoop.fs.s3a.path.style.access", "true")
        out.setdefault("spark.hadoop.fs.s3a.connection.ssl.enabled", str(endpoint.startswith("https://")).lower())
    if region:
        out.setdefault("spark.hadoop.fs.s3a.endpoint.region", region)
    return out


def hadoop_version() -> str:
    """The Hadoop version of the installed pyspark's jars (what ``hadoop-aws`` must match)."""
    import glob

    import pyspark

    jars = glob.glob(os.path.join(os.path.dirname(pyspark.__file__), "jars", "hadoop-client-api-*.jar"))
    if not jars:
        raise RuntimeError("no hadoop-client-api jar in the installed pyspark: cannot pick hadoop-aws's version")
    return os.path.basename(jars[0]).removeprefix("hadoop-client-api-").removesuffix(".jar")


def _connect(app_name: str, remote: str, conf: Mapping[str, str]):
    from pyspark.sql import SparkSession

    settings = {k: v for k, v in LOCAL_CONF.items() if k in RUNTIME_CONF}
    settings.update(conf)
    builder = SparkSession.builder.remote(remote).appName(app_name)
    for k, v in settings.items():
        builder = builder.config(k, v)
    spark = builder.getOrCreate()
    log.info("spark %s via Spark Connect at %s", spark.version, remote)
    return spark


def is_connect(spark) -> bool:
    """Whether ``spark`` is a Spark Connect session (no ``SparkContext`` on the client)."""
    return type(spark).__module__.startswith("pyspark.sql.connect")


def default_parallelism(spark) -> int:
    """The cluster's task slots: ``SparkContext.defaultParallelism``, or on Spark Connect (no context) the
    server's ``spark.default.parallelism`` when it is readable, else 2."""
    if not is_connect(spark):
        return int(spark.sparkContext.defaultParallelism)
    try:
        return int(spark.conf.get("spark.default.parallelism"))
    except Exception:  # not set on the server: Spark's own default is the cores, which a client cannot see
        return 2


def is_local(spark) -> bool:
    """Whether the session runs Spark in one process (``local[...]``); a Connect server counts by its master."""
    if not is_connect(spark):
        return spark.sparkContext.master.startswith("local")
    try:
        return str(spark.conf.get("spark.master")).startswith("local")
    except Exception:
        return False


SHUFFLE_PARTITIONS = "spark.sql.shuffle.partitions"
ROWS_PER_PARTITION = 500_000  # rows per shuffle partition of the data stages' row-sized runs (size_shuffles)
CONFIGURED_SHUFFLES = "spark.crossrec.configuredShufflePartitions"  # the setting a run started with
ADAPTIVE = "spark.sql.adaptive.enabled"
CONFIGURED_ADAPTIVE = "spark.crossrec.configuredAdaptive"  # the setting a run started with
MIN_FILE_SIZE = "spark.databricks.delta.optimize.minFileSize"  # OPTIMIZE leaves files at least this big alone


def size_shuffles(spark, units: int, per_partition: int) -> int:
    """Size the session's shuffles to a run that processes ``units`` (rows, users): one partition per
    ``per_partition`` units, at least the default parallelism, at most the configured number; return the number set.

    Adaptive execution coalesces partitions after a shuffle, but not everywhere (the build side of a broadcast, a
    window over a cached frame): a night of a few thousand rows would otherwise run the configured number of tasks
    in every shuffle, which is most of its time on a small cluster. A run smaller than one partition's units turns
    adaptive execution off: there is nothing to coalesce or split, and it would run every query stage as a job of its
    own. The caller restores both settings (:func:`crossrec.io.runs.stage_run` does when the run ends).
    """
    configured = int(spark.conf.get(CONFIGURED_SHUFFLES, spark.conf.get(SHUFFLE_PARTITIONS)))
    spark.conf.set(CONFIGURED_SHUFFLES, str(configured))  # a second call in the run sizes from the same ceiling
    floor = default_parallelism(spark)
    n = max(1, min(configured, max(floor, -(-int(units) // per_partition))))
    spark.conf.set(SHUFFLE_PARTITIONS, str(n))
    adaptive = spark.conf.get(CONFIGURED_ADAPTIVE, spark.conf.get(ADAPTIVE, "true"))
    spark.conf.set(CONFIGURED_ADAPTIVE, adaptive)
    spark.conf.set(ADAPTIVE, "false" if units < per_partition else adaptive)
    log.info("shuffle partitions: %d for %s units (configured %d)%s", n, f"{int(units):,}", configured,
             ", adaptive execution off" if units < per_partition else "")
    return n


def _python() -> str:
    import sys

    return sys.executable
