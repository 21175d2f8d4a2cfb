"""What every job's ``main()`` shares: common flags, config resolution, logging, exit codes."""
from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
import time
from typing import Callable

from crossrec.io.config import ConfigError, CrossrecConfig, resolve_config

log = logging.getLogger("crossrec")

EXIT_OK = 0
EXIT_BAD_INPUT = 2  # raw data or configuration does not follow the documented format
EXIT_VALIDATION = 3  # a Great Expectations checkpoint failed
EXIT_ACCOUNTING = 4  # rows in != rows out + quarantined + duplicates
EXIT_BUSY = 5  # another run of the same stage holds the lake's lock for it


def add_common_args(p: argparse.ArgumentParser, raw: bool = False, validates: bool = True) -> None:
    """Flags every Spark job takes; each overrides the config file and the environment (``--no-validate`` only
    for jobs that run checkpoints: ``validates``)."""
    g = p.add_argument_group("configuration (defaults -> --config file -> CROSSREC_* env -> flags)")
    g.add_argument("--config", help="TOML file with config keys (see README, Configuration)")
    g.add_argument("--lake-root", dest="lake_root", help="lakehouse root: folder or s3a://, abfss://, hdfs:// URI (default ./lakehouse)")
    if raw:
        g.add_argument("--raw-dir", dest="raw_dir", help="raw data set folder holding dataset.json (default ./demo-data/raw)")
    g.add_argument("--run-date", dest="run_date", help="logical date YYYY-MM-DD of this run (default: today, UTC)")
    g.add_argument("--run-id", dest="run_id", help="id stamped on written rows (default <stage>-<run-date>)")
    g.add_argument("--spark-master", dest="spark_master", help="'local[*]' (default) or 'none' to take it from spark-submit")
    g.add_argument("--spark-remote", dest="spark_remote", help="run on a Spark Connect server, e.g. sc://host:15002")
    g.add_argument("--pseudonym-key-file", dest="pseudonym_key_file", help="file with the secret for user-id pseudonymisation")
    if validates:
        g.add_argument("--no-validate", dest="validate", action="store_const", const=False,
                       help="skip Great Expectations checkpoints")
    g.add_argument("-v", "--verbose", action="store_true", help="debug logging")


def config_from_args(args: argparse.Namespace) -> CrossrecConfig:
    # every config key a job's parser defines (flags not given are None and do not override)
    overrides = {f.name: getattr(args, f.name, None) for f in dataclasses.fields(CrossrecConfig)}
    return resolve_config(getattr(args, "config", None), overrides)


def setup_logging(verbose: bool = False) -> None:
    """Configure logging once, in ``main()``: crossrec at INFO (DEBUG with -v), noisy libraries at WARNING."""
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
        stream=sys.stderr,
        force=True,
    )
    for noisy in ("py4j", "great_expectations", "urllib3", "matplotlib", "filelock", "asyncio"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def run_job(
    stage: str,
    doc: str,
    add_arguments: Callable[[argparse.ArgumentParser], None],
    run: Callable[..., object],
    argv: list[str] | None = None,
    with_args: bool = False,
) -> int:
    """The ``main(argv)`` of a Spark job: parse flags -> config (logged) -> Spark session -> ``run`` -> exit code.

    ``run(cfg, spark)``, or ``run(cfg, spark, args)`` with ``with_args=True`` (the stage's own flags).
    """
    p = argparse.ArgumentParser(prog=f"crossrec {stage}", description=doc.split("\n\n")[0])
    add_arguments(p)
    args = p.parse_args(argv)
    setup_logging(args.verbose)

    def body() -> None:
        from crossrec.io.spark import build_spark

        cfg = config_from_args(args)
        log.info("%s config: %s", stage, cfg.masked())
        spark = build_spark(f"crossrec-{stage}", cfg.spark_master, spark_conf(cfg), remote=cfg.spark_remote)
        run(cfg, spark, args) if with_args else run(cfg, spark)

    return run_guarded(stage, body)


def spark_conf(cfg: CrossrecConfig) -> dict[str, str]:
    """The config's ``spark_conf`` plus what the lake's and raw data's object stores need
    (:func:`crossrec.io.spark.with_object_store`); on Spark Connect the server holds those settings."""
    from crossrec.io.spark import with_object_store

    if cfg.spark_remote:
        return dict(cfg.spark_conf)
    return with_object_store(cfg.spark_conf, [cfg.lake_uri, cfg.raw_dir], cfg.spark_master is not None)


def run_guarded(stage: str, fn: Callable[[], object]) -> int:
    """Run a job body, turning the project's known failures into a one-paragraph message and an exit code."""
    from crossrec.data.rawformat import RawFormatError
    from crossrec.io.accounting import AccountingError, QuarantineShareExceeded
    from crossrec.io.registry import ModelNotFound
    from crossrec.io.runs import StageBusy
    from crossrec.quality.contracts import ContractError
    from crossrec.quality.validate import ValidationFailed

    t0 = time.time()
    try:
        fn()
    except (RawFormatError, ConfigError, ContractError) as e:
        log.error("%s: bad input: %s", stage, e)
        return EXIT_BAD_INPUT
    except ModelNotFound as e:
        log.error("%s: %s", stage, e)
        return EXIT_BAD_INPUT
    except ValidationFailed as e:
        log.error("%s: validation failed; nothing downstream should run.\n%s", stage, e)
        return EXIT_VALIDATION
    except QuarantineShareExceeded as e:
        log.error("%s: %s", stage, e)
        return EXIT_VALIDATION
    except AccountingError as e:
        log.error("%s: %s", stage, e)
        return EXIT_ACCOUNTING
    except StageBusy as e:
        log.error("%s: refused: %s", stage, e)
        return EXIT_BUSY
    log.info("%s: done in %.1fs", stage, time.time() - t0)
    return EXIT_OK
