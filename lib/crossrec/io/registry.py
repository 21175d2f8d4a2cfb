"""The model registry: MLflow tracking and the ``crossrec`` registered model, whose ``champion`` alias is the model
evaluate and score use.

    crossrec train   -> the artifact folder <lake>/models/<model_version>/ (crossrec.model.artifact), made a pyfunc
                        model in place (an MLmodel file; crossrec.model.pyfunc), one MLflow run (parameters, per-epoch
                        metrics), one registered version whose source is the folder; then the promotion gate
                        (jobs/train.py) moves ``champion`` to it or not
    crossrec evaluate / score -> ``models:/crossrec@champion`` (or a named version) -> the artifact folder

Embedded default: a SQLite registry in ``<lake>/_mlflow/mlflow.db`` with run artifacts under ``<lake>/_mlflow``;
on a cluster ``mlflow_tracking_uri`` names the tracking server (config key, or ``CROSSREC_MLFLOW_TRACKING_URI``).
A version's files stay where train wrote them (the registry records their location, it does not copy them): a
local folder, or on a remote lake its URI (``s3://`` for ``s3a://``, what MLflow's boto3 client reads).
"""
from __future__ import annotations

import logging
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from crossrec.io.config import ConfigError
from crossrec.io.lakefs import delete_folder, exists, is_remote, join, s3_uri

log = logging.getLogger(__name__)

MODEL_NAME = "crossrec"
CHAMPION = "champion"
EXPERIMENT = "crossrec"
VERSION_TAG = "crossrec.model_version"  # the artifact's own version (YYYYMMDD-<8 hex>), as in gold.recommendations
ARTIFACT_MARKER = "config.json"  # a folder holding this is a crossrec artifact
_ARTIFACT_VERSION = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
_REF = re.compile(r"(?:models:/(?P<name>[A-Za-z0-9_.-]+))?(?:/(?P<number>\d+)|@(?P<alias>[A-Za-z0-9_-]+))")


class ModelNotFound(LookupError):
    """The registry has no such model version or alias."""


def tracking_uri(lake_uri: str, configured: str | None = None) -> str:
    """``configured``, else the embedded SQLite registry of a local lake (its folder created)."""
    if configured:
        return configured
    if "://" in lake_uri:
        raise ConfigError(f"a lake on object storage ({lake_uri}) keeps no SQLite registry: set mlflow_tracking_uri "
                          "(config key, or CROSSREC_MLFLOW_TRACKING_URI) to an MLflow tracking server")
    folder = Path(lake_uri).resolve() / "_mlflow"
    folder.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{folder}/mlflow.db"


@dataclass(frozen=True)
class ModelVersion:
    """One registered version: its number, the artifact folder, the artifact's own version, its run and aliases."""

    number: int
    folder: str
    model_version: str
    run_id: str | None
    aliases: tuple[str, ...]
    created_at: float  # seconds since the epoch

    @property
    def is_champion(self) -> bool:
        return CHAMPION in self.aliases


class Registry:
    """The lake's model registry (MLflow). ``name`` is the registered model (``crossrec``; the benchmarks register
    their reference models under other names so that they never take the ``crossrec`` champion)."""

    def __init__(self, lake_uri: str, uri: str | None = None, name: str = MODEL_NAME):
        os.environ.setdefault("MLFLOW_ENABLE_ASYNC_LOGGING", "false")
        logging.getLogger("alembic").setLevel(logging.WARNING)  # schema migrations of a new SQLite file, per table
        from mlflow import MlflowClient

        self.lake_uri, self.name = lake_uri, name
        self.uri = tracking_uri(lake_uri, uri)
        self.client = MlflowClient(tracking_uri=self.uri, registry_uri=self.uri)

    # ------------------------------------------------------------------------------------------- writing
    def _experiment_id(self) -> str:
        exp = self.client.get_experiment_by_name(EXPERIMENT)
        if exp is not None:
            return exp.experiment_id
        location = (s3_uri(join(self.lake_uri, "_mlflow", "artifacts")) if is_remote(self.lake_uri)
                    else Path(self.lake_uri, "_mlflow", "artifacts").resolve().as_uri())
        return self.client.create_experiment(EXPERIMENT, artifact_location=location)

    def register(self, folder: str | Path, params: Mapping[str, Any], epochs: list[Mapping[str, Any]],
                 metrics: Mapping[str, float], tags: Mapping[str, str] | None = None) -> ModelVersion:
        """Log one training run (``params``; ``epochs``: one mapping of numbers per epoch, logged with the epoch as
        step; ``metrics``: final figures) and register ``folder`` as a new version. The folder becomes a pyfunc
        model in place (:mod:`crossrec.model.pyfunc`). A folder registered before (a training re-run that
        reused its artifact) keeps its version: nothing is logged again."""
        from mlflow.entities import Metric, Param
        from mlflow.exceptions import MlflowException

        from crossrec.model.pyfunc import write_mlmodel

        if is_remote(folder):  # train wrote its MLmodel before copying it up
            folder = s3_uri(str(folder).rstrip("/"))
            if not exists(join(folder, "MLmodel")):
                raise ModelNotFound(f"{folder} has no MLmodel file: not an artifact `crossrec train` wrote")
        else:
            folder = Path(folder).resolve()
            write_mlmodel(folder)
        model_version = str(folder).rsplit("/", 1)[-1]
        for v in self.versions():
            if v.folder == str(folder):
                log.info("registry: %s is %s version %d already", folder, self.name, v.number)
                return v
        run = self.client.create_run(self._experiment_id(), run_name=model_version,
                                     tags={VERSION_TAG: model_version, **(tags or {})})
        rid, now = run.info.run_id, int(time.time() * 1000)
        ps = [Param(str(k), str(v)[:6000]) for k, v in sorted(params.items())]
        ms = [Metric(_metric_key(k), float(v), now, step) for step, e in enumerate(epochs) for k, v in e.items()
              if isinstance(v, (int, float)) and not isinstance(v, bool)]
        ms += [Metric(_metric_key(k), float(v), now, 0) for k, v in metrics.items()]
        for i in range(0, max(len(ps), len(ms)), 100):  # MLflow takes at most 100 params per batch
            self.client.log_batch(rid, metrics=ms[i : i + 100], params=ps[i : i + 100])
        self.client.set_terminated(rid)
        try:
            self.client.create_registered_model(self.name)
        except MlflowException as e:
            if e.error_code != "RESOURCE_ALREADY_EXISTS":
                raise
        mv = self.client.create_model_version(self.name, source=str(folder), run_id=rid,
                                              tags={VERSION_TAG: model_version})
        log.info("registry: %s version %s <- %s (run %s)", self.name, mv.version, folder, rid)
        return self.version(int(mv.version))

    def set_champion(self, number: int) -> None:
        self.client.set_registered_model_alias(self.name, CHAMPION, str(number))
        log.info("registry: %s@%s -> version %d", self.name, CHAMPION, number)

    def log_metrics(self, number: int, metrics: Mapping[str, float]) -> None:
        """Add ``metrics`` (e.g. evaluate's test figures) to the run that trained version ``number``."""
        run_id = self.version(number).run_id
        if run_id is None:
            return
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        ms = [Metric(_metric_key(k), float(v), now, 0) for k, v in metrics.items()]
        for i in range(0, len(ms), 1000):
            self.client.log_batch(run_id, metrics=ms[i : i + 1000])

    def delete(self, number: int) -> None:
        """Remove version ``number`` from the registry (not the champion) and its artifact folder."""
        mv = self.version(number)
        if mv.is_champion:
            raise ValueError(f"{self.name} version {number} holds @{CHAMPION}; it is not deleted")
        self.client.delete_model_version(self.name, str(number))
        if exists(join(mv.folder, ARTIFACT_MARKER)):
            delete_folder(mv.folder)

    # ------------------------------------------------------------------------------------------- reading
    def versions(self) -> list[ModelVersion]:
        """Every registered version, newest first ([] when none or no registered model yet)."""
        from mlflow.exceptions import MlflowException

        try:
            aliases = self.client.get_registered_model(self.name).aliases  # {alias: version}
        except MlflowException:
            return []
        by_version: dict[str, list[str]] = {}
        for a, v in aliases.items():
            by_version.setdefault(str(v), []).append(a)
        out = [_version(mv, by_version.get(str(mv.version), []))
               for mv in self.client.search_model_versions(f"name='{self.name}'")]
        return sorted(out, key=lambda v: v.number, reverse=True)

    def version(self, number: int) -> ModelVersion:
        from mlflow.exceptions import MlflowException

        try:
            mv = self.client.get_model_version(self.name, str(number))
        except MlflowException as e:
            raise ModelNotFound(f"{self.name} has no version {number} in the registry at {self.uri}") from e
        aliases = [a for a, v in self.client.get_registered_model(self.name).aliases.items() if str(v) == str(number)]
        return _version(mv, aliases)

    def champion(self) -> ModelVersion | None:
        """The version that holds ``champion``; None when no model has taken it yet."""
        from mlflow.exceptions import MlflowException

        try:
            mv = self.client.get_model_version_by_alias(self.name, CHAMPION)
        except MlflowException:
            return None
        return self.version(int(mv.version))

    def resolve(self, ref: str | None) -> ModelVersion:
        """A model reference -> its registered version: None (the champion), a version number, ``@alias``,
        ``models:/<name>/<number>`` or ``models:/<name>@<alias>``.

        Raises:
            ModelNotFound: no such version or alias, or no champion yet.
            ConfigError: ``ref`` is none of these forms.
        """
        if ref is None:
            champ = self.champion()
            if champ is None:
                raise ModelNotFound(f"no {self.name}@{CHAMPION} in the registry at {self.uri}: run `crossrec train`")
            return champ
        if ref.isdigit():
            return self.version(int(ref))
        m = _REF.fullmatch(ref)
        if m is None and _ARTIFACT_VERSION.fullmatch(ref):  # the artifact's own version, as gold tables record it
            for v in self.versions():
                if v.model_version == ref:
                    return v
            raise ModelNotFound(f"no registered {self.name} version holds model version {ref!r} ({self.uri})")
        if m is None:
            raise ConfigError(f"model reference {ref[:80]!r}: expected a version number, @alias, models:/NAME/N, "
                              "models:/NAME@alias or an artifact folder")
        name = m.group("name") or self.name
        reg = self if name == self.name else Registry(self.lake_uri, self.uri, name)
        if m.group("number"):
            return reg.version(int(m.group("number")))
        from mlflow.exceptions import MlflowException

        try:
            mv = reg.client.get_model_version_by_alias(name, m.group("alias"))
        except MlflowException as e:
            raise ModelNotFound(f"{name} has no alias @{m.group('alias')} in the registry at {self.uri}") from e
        return reg.version(int(mv.version))


def _metric_key(key: str) -> str:
    """MLflow metric names take letters, digits and ``_-./ ``: ``valid_ndcg@10`` -> ``valid_ndcg_at_10``."""
    return re.sub(r"[^A-Za-z0-9_\-./ ]", "_", str(key).replace("@", "_at_"))


def _version(mv, aliases: list[str]) -> ModelVersion:
    return ModelVersion(number=int(mv.version), folder=str(mv.source).removeprefix("file://"),
                        model_version=(mv.tags or {}).get(VERSION_TAG, Path(str(mv.source)).name),
                        run_id=mv.run_id or None, aliases=tuple(sorted(aliases)),
                        created_at=(mv.creation_timestamp or 0) / 1000)


def artifact_folder(lake_uri: str, ref: str | None, uri: str | None = None) -> str:
    """The artifact folder of a model reference: an artifact folder's own path as given, else the folder of the
    registered version ``ref`` names (:meth:`Registry.resolve`; None = the champion).

    Raises:
        ModelNotFound: no such version or alias, or no champion yet.
    """
    if ref is not None and "/" in ref and not ref.startswith("models:/"):
        if exists(join(ref, ARTIFACT_MARKER)):
            return ref
        raise ModelNotFound(f"{ref} is not a model artifact folder (no {ARTIFACT_MARKER})")
    if ref is not None and _ARTIFACT_VERSION.fullmatch(ref) and not ref.isdigit():
        folder = join(lake_uri, "models", ref)  # where crossrec train writes it, registered or not
        if exists(join(folder, ARTIFACT_MARKER)):
            return folder
    mv = Registry(lake_uri, uri).resolve(ref)
    if not exists(join(mv.folder, ARTIFACT_MARKER)):
        raise ModelNotFound(f"registered version {mv.number} points at {mv.folder}, which holds no model artifact")
    return mv.folder


__all__ = ["MODEL_NAME", "CHAMPION", "VERSION_TAG", "ModelNotFound", "ModelVersion", "Registry", "tracking_uri",
           "artifact_folder"]
