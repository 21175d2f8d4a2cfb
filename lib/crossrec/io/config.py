"""The one configuration object of crossrec.

Merge order (later wins): embedded defaults -> TOML file (``--config``) -> ``CROSSREC_*`` environment
variables that name secrets/paths -> CLI flags. The resolved config is logged at the start of each job
(secrets masked). Only ``main()`` functions call :func:`resolve_config`; the library receives the frozen
object and never reads ``sys.argv`` or the environment itself.
"""
from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import os
import re
import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Mapping

from crossrec.model.config import ModelConfig

log = logging.getLogger(__name__)

ENV_PREFIX = "CROSSREC_"
# a setting is secret when its name says so (any key, at any depth: spark_conf's fs.s3a.secret.key, a token, ...)
SECRET_NAME = re.compile(r"secret|password|passwd|token|credential|private|key", re.IGNORECASE)
NOT_SECRET = frozenset({"pseudonym_key_file"})  # names that match but hold no secret (a path)
MASK = "***"


def is_secret(name: str) -> bool:
    """Whether a setting's value is masked in logs, ``repr``, reports and errors (by its name, not a list)."""
    return name not in NOT_SECRET and SECRET_NAME.search(name) is not None


def mask_secrets(values: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of ``values`` with every secret-named value (:func:`is_secret`, nested mappings too) masked."""
    out: dict[str, Any] = {}
    for k, v in values.items():
        if isinstance(v, Mapping):
            out[k] = mask_secrets(v)
        else:
            out[k] = MASK if v not in (None, "") and is_secret(str(k)) else v
    return out


class ConfigError(ValueError):
    """A configuration value is missing or invalid; the message names the key."""


@dataclass(frozen=True)
class CrossrecConfig:
    """Paths, engines and policies of one crossrec run.

    Attributes:
        lake_root: root of the lakehouse; a local folder or any Hadoop URI (``s3a://``, ``abfss://``, ``hdfs://``).
        raw_dir: folder holding ``dataset.json`` and the raw files (see docs/raw-format.md).
        run_date: the logical date of the run (ISO ``YYYY-MM-DD``); events after its end are "in the future".
        run_id: identifier stamped on rows written by this run; default derived from run_date by the job.
        spark_master: ``local[*]`` embedded; ``None`` leaves it to ``spark-submit --master``.
        spark_remote: a Spark Connect server (``sc://host:port``) the Spark jobs run on instead; ``spark_master``
            is then unused (the server's own master and jars hold).
        spark_conf: extra Spark settings (``key = value``), e.g. shuffle partitions on a cluster.
        pseudonym_key: secret for HMAC pseudonymisation of user ids (env ``CROSSREC_PSEUDONYM_KEY``).
        pseudonym_key_file: file holding that secret (env ``CROSSREC_PSEUDONYM_KEY_FILE``).
        min_event_ts: events before this UTC date are out of range.
        max_text_chars: item text longer than this is truncated (and counted).
        missing_items: ``quarantine`` interactions on items absent from the catalog, or add a
            ``placeholder`` item for them (title = item id, flagged in attributes).
        validate: run the Great Expectations checkpoint after each write.
        reports_dir: where validation reports go; default ``<lake_root>/_reports``.
        max_seq_len: events of history a model sees (features keep the newest ones).
        cold_start_users: per domain, users active in it and in another domain whose whole history in it is
            withheld from training (the cross-domain cold-start sample the evaluation's ``cold_start`` segment reads;
            a seeded sample). Enough of them that the segment can tell models apart (standard errors shrink with
            the square root of their number).
        cold_start_fraction: at most this share of a domain's candidates (users given that domain, of those active
            in two or more) are sampled: the rest stay in training to learn the transfer from.
        cold_start_cohort: a cohort of the data set's ``extras.user_cohorts`` file to use as that sample instead
            (every user of it; e.g. Food+Kitchen's ``test``); None (default) = the seeded sample.
        seed: seed of every sampled choice (cold-start users and their target domain, training).
        allow_empty_domains: a domain whose interactions or items files hold no row is an error (exit 2) unless
            this is true (then only a warning).
        max_quarantine_share: clean fails (exit 3, nothing written) when more than this share of a domain's or a
            file's rows is quarantined, naming the domain, the file and the top reasons; 1.0 turns the check off.
        vacuum_retention_hours: ``VACUUM`` keeps the files table versions of the last this many hours need (Delta's
            minimum is 168 unless its retention check is turned off in ``spark_conf``); ``crossrec forget`` vacuums
            the tables it erased from with it.
        raw_paths_outside_root: accept ``dataset.json`` file set paths outside ``raw_dir`` (absolute, ``../``, another
            store); off by default, so a data set reads only its own folder.
        full_refresh: clean and features rebuild their tables from the whole layer below instead of merging the
            rows that arrived since their last run (after a change of ``dataset.json`` or of these settings they do
            so on their own); quarantine verdicts of earlier nights are made again.
        keep_run_dates: ``crossrec maintain`` keeps this many newest run dates of gold.recommendations (the published
            one always).
        keep_models: ``crossrec maintain`` keeps this many newest registered model versions (the champion always).
        mlflow_tracking_uri: the MLflow tracking server and model registry (default: a SQLite file in
            ``<lake>/_mlflow``, which a local lake only can hold; a lake on object storage needs a server URI).
        promotion_tolerance_se: ``crossrec train`` moves the registry's ``champion`` alias to the new model unless,
            in some domain, it is worse than the champion by more than this many standard errors of the paired
            per-user NDCG@10 difference on the lake's test split (default 2: only a clearly worse model is kept out).
        compact_file_mb: ``crossrec maintain``'s compaction rewrites only files smaller than this (Delta's
            ``optimize.minFileSize``): a night's small files are packed together, files already this big stay, so a
            night's compaction costs the night's files, not the table (Z-order still rewrites the table).
        text_encoder: how training reads item text: ``frozen`` (the features job's embeddings), ``finetune`` (the
            text model runs in every step, its top layers trained) or ``auto`` (default: finetune on GPU workers,
            frozen on CPU ones).
    """

    lake_root: str = "lakehouse"
    raw_dir: str = "demo-data/raw"
    run_date: str = field(default_factory=lambda: dt.datetime.now(dt.timezone.utc).date().isoformat())
    run_id: str | None = None
    spark_master: str | None = "local[*]"
    spark_remote: str | None = None
    spark_conf: Mapping[str, str] = field(default_factory=dict)
    pseudonym_key: str | None = None
    pseudonym_key_file: str | None = None
    min_event_ts: str = "1995-01-01"
    max_text_chars: int = 10_000
    missing_items: str = "quarantine"
    validate: bool = True
    reports_dir: str | None = None
    max_seq_len: int = ModelConfig.max_seq_len
    cold_start_users: int = 2000
    cold_start_fraction: float = 0.5
    cold_start_cohort: str | None = None
    seed: int = 42
    allow_empty_domains: bool = False
    max_quarantine_share: float = 0.5
    vacuum_retention_hours: float = 168.0
    raw_paths_outside_root: bool = False
    text_encoder: str = "auto"
    full_refresh: bool = False
    keep_run_dates: int = 7
    keep_models: int = 3
    mlflow_tracking_uri: str | None = None
    promotion_tolerance_se: float = 2.0
    compact_file_mb: float = 64.0

    def __post_init__(self) -> None:
        for name in ("run_date", "min_event_ts", "lake_root", "raw_dir"):
            if not isinstance(getattr(self, name), str):
                raise ConfigError(f"{name} must be a string, got {getattr(self, name)!r}")
        try:
            dt.date.fromisoformat(self.run_date)
        except ValueError as e:
            raise ConfigError(f"run_date must be YYYY-MM-DD, got {self.run_date!r}") from e
        try:
            dt.date.fromisoformat(self.min_event_ts)
        except ValueError as e:
            raise ConfigError(f"min_event_ts must be YYYY-MM-DD, got {self.min_event_ts!r}") from e
        if self.missing_items not in ("quarantine", "placeholder"):
            raise ConfigError(f"missing_items must be 'quarantine' or 'placeholder', got {self.missing_items!r}")
        if self.keep_run_dates < 1 or self.keep_models < 1:
            raise ConfigError(f"keep_run_dates and keep_models must be >= 1, got {self.keep_run_dates}, {self.keep_models}")
        if self.promotion_tolerance_se < 0:
            raise ConfigError(f"promotion_tolerance_se must be >= 0, got {self.promotion_tolerance_se}")
        if self.compact_file_mb <= 0:
            raise ConfigError(f"compact_file_mb must be > 0, got {self.compact_file_mb}")
        if self.vacuum_retention_hours < 0:
            raise ConfigError(f"vacuum_retention_hours must be >= 0, got {self.vacuum_retention_hours}")
        if not 0.0 <= self.max_quarantine_share <= 1.0:
            raise ConfigError(f"max_quarantine_share must be in [0, 1], got {self.max_quarantine_share}")
        if not 0.0 <= self.cold_start_fraction <= 1.0:
            raise ConfigError(f"cold_start_fraction must be in [0, 1], got {self.cold_start_fraction}")
        if not isinstance(self.cold_start_users, int) or self.cold_start_users < 0:
            raise ConfigError(f"cold_start_users must be an integer >= 0, got {self.cold_start_users!r}")
        if self.text_encoder not in ("auto", "frozen", "finetune"):
            raise ConfigError(f"text_encoder must be 'auto', 'frozen' or 'finetune', got {self.text_encoder!r}")
        if self.max_seq_len < 1:
            raise ConfigError(f"max_seq_len must be >= 1, got {self.max_seq_len}")
        if self.max_text_chars < 1:
            raise ConfigError(f"max_text_chars must be >= 1, got {self.max_text_chars}")

    # ----------------------------------------------------------------- derived values
    def table_path(self, name: str) -> str:
        """Location of a table such as ``silver.interactions``: ``<lake_root>/silver/interactions``."""
        layer, _, table = name.partition(".")
        if not table:
            raise ConfigError(f"table names are '<layer>.<table>', got {name!r}")
        return f"{self.lake_uri}/{layer}/{table}"

    @property
    def lake_uri(self) -> str:
        """The lake root as Spark should see it: URIs as given, local folders made absolute
        (Delta takes a relative path such as ``lakehouse/bronze/x`` for a table name)."""
        root = self.lake_root.rstrip("/")
        if "://" in root:
            return root
        return os.path.abspath(root.removeprefix("file:"))

    @property
    def reports_root(self) -> str:
        return self.reports_dir or f"{self.lake_uri}/_reports"

    def effective_run_id(self, stage: str) -> str:
        """The run id rows are stamped with: the configured one, else ``<stage>-<run_date>``."""
        return self.run_id or f"{stage}-{self.run_date}"

    def require_pseudonym_key(self) -> bytes:
        """The HMAC key; a clear error when none is configured (a key is never built in)."""
        if self.pseudonym_key:
            if len(self.pseudonym_key) < 16:
                raise ConfigError("pseudonym_key (CROSSREC_PSEUDONYM_KEY) is shorter than 16 characters")
            return self.pseudonym_key.encode("utf-8")
        if self.pseudonym_key_file:
            p = Path(self.pseudonym_key_file)
            if not p.is_file():
                raise ConfigError(f"pseudonym_key_file {p} does not exist")
            key = p.read_text(encoding="utf-8").strip()
            if len(key) < 16:
                raise ConfigError(f"pseudonym key in {p} is shorter than 16 characters")
            return key.encode("utf-8")
        raise ConfigError(
            "no pseudonymisation key: set CROSSREC_PSEUDONYM_KEY, CROSSREC_PSEUDONYM_KEY_FILE, "
            "--pseudonym-key-file or pseudonym_key_file in the config file"
        )

    def masked(self) -> dict[str, Any]:
        """The config as a dict with every secret-named value masked (:func:`mask_secrets`), for logs."""
        return mask_secrets(dataclasses.asdict(self))

    def __repr__(self) -> str:  # the dataclass repr would print the key and spark_conf's secrets
        return f"CrossrecConfig({', '.join(f'{k}={v!r}' for k, v in self.masked().items())})"


def _coerce(name: str, value: Any) -> Any:
    """Coerce a string from the environment or the CLI to the field's type."""
    f = {f.name: f for f in fields(CrossrecConfig)}[name]
    if not isinstance(value, str):
        return value
    if name == "spark_conf":
        pairs = [p for p in value.split(",") if p.strip()]
        if not all("=" in p for p in pairs):
            raise ConfigError("spark_conf must look like 'key=value,key2=value2' (the value is not shown: it may hold "
                              "a secret)")
        return {k.strip(): v.strip() for k, v in (p.split("=", 1) for p in pairs)}
    if f.type in ("bool",):
        if value.lower() in ("1", "true", "yes", "on"):
            return True
        if value.lower() in ("0", "false", "no", "off"):
            return False
        raise ConfigError(f"{name} must be true/false, got {value!r}")
    if f.type in ("float",):
        try:
            return float(value)
        except ValueError as e:
            raise ConfigError(f"{name} must be a number, got {value!r}") from e
    if f.type in ("int",):
        try:
            return int(value)
        except ValueError as e:
            raise ConfigError(f"{name} must be an integer, got {value!r}") from e
    return value


def resolve_config(
    config_file: str | os.PathLike | None = None,
    overrides: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
) -> CrossrecConfig:
    """Build the config: defaults -> ``config_file`` (TOML) -> ``CROSSREC_<FIELD>`` env -> ``overrides``.

    ``overrides`` holds CLI flags; ``None`` values mean "flag not given" and are ignored.
    """
    names = {f.name for f in fields(CrossrecConfig)}
    merged: dict[str, Any] = {}
    if config_file:
        p = Path(config_file)
        if not p.is_file():
            raise ConfigError(f"config file {p} does not exist")
        with p.open("rb") as fh:
            try:
                data = tomllib.load(fh)
            except tomllib.TOMLDecodeError as e:
                raise ConfigError(f"config file {p}: {e}") from e
        unknown = set(data) - names
        if unknown:
            raise ConfigError(f"config file {p}: unknown keys {sorted(unknown)}; known: {sorted(names)}")
        # an unquoted TOML date (run_date = 2024-06-30) arrives as datetime.date: keep the ISO text
        merged.update({k: v.isoformat() if isinstance(v, dt.date) else v for k, v in data.items()})
    env = os.environ if environ is None else environ
    for name in names:
        v = env.get(ENV_PREFIX + name.upper())
        if v not in (None, ""):
            merged[name] = _coerce(name, v)
    for k, v in (overrides or {}).items():
        if v is None:
            continue
        if k not in names:
            raise ConfigError(f"unknown config key {k!r}")
        merged[k] = _coerce(k, v)
    if merged.get("spark_master") in ("", "none", "None"):
        merged["spark_master"] = None
    return CrossrecConfig(**merged)
