"""Tests of crossrec.io.registry (the MLflow model registry of a lake) and of maintain's retention of model versions.
The artifacts here are folders with a config.json: the registry records where they are, it never reads them."""
from __future__ import annotations

from pathlib import Path

import pytest

from crossrec.io.config import ConfigError, resolve_config
from crossrec.io.maintain import _drop_old_models
from crossrec.io.registry import ModelNotFound, Registry, artifact_folder, tracking_uri


def _artifact(lake: Path, name: str) -> Path:
    folder = lake / "models" / name
    folder.mkdir(parents=True)
    (folder / "config.json").write_text("{}")
    return folder


@pytest.fixture()
def registry(tmp_path) -> Registry:
    reg = Registry(str(tmp_path))
    for name in ("20261201-aaaaaaaa", "20261202-bbbbbbbb", "20261203-cccccccc"):
        reg.register(_artifact(tmp_path, name), {"train.lr": 0.001}, [{"valid_ndcg@10": 0.1, "stop": False}],
                     {"valid_ndcg@10": 0.2})
    return reg


def test_an_empty_registry_has_no_champion_and_says_so(tmp_path):
    reg = Registry(str(tmp_path))
    assert reg.versions() == [] and reg.champion() is None
    assert tracking_uri(str(tmp_path)) == f"sqlite:///{tmp_path}/_mlflow/mlflow.db"
    with pytest.raises(ModelNotFound, match="no crossrec@champion .* run `crossrec train`"):
        artifact_folder(str(tmp_path), None)


def test_every_reference_form_resolves_to_the_registered_folder(registry, tmp_path):
    assert [v.number for v in registry.versions()] == [3, 2, 1]
    registry.set_champion(2)
    second = str(tmp_path / "models" / "20261202-bbbbbbbb")
    for ref in (None, "2", "@champion", "models:/crossrec@champion", "models:/crossrec/2", "20261202-bbbbbbbb", second):
        assert artifact_folder(str(tmp_path), ref) == second, ref
    assert registry.champion().model_version == "20261202-bbbbbbbb" and registry.version(2).is_champion
    with pytest.raises(ModelNotFound, match="no version 9"):
        artifact_folder(str(tmp_path), "9")
    with pytest.raises(ModelNotFound, match="no alias @staging"):
        artifact_folder(str(tmp_path), "@staging")
    with pytest.raises(ModelNotFound, match="is not a model artifact folder"):
        artifact_folder(str(tmp_path), str(tmp_path / "models"))


@pytest.mark.parametrize("bad", ["../../etc", "..", ".hidden", "x" * 200, "models:/crossrec/two"])
def test_a_reference_that_is_neither_a_version_nor_a_folder_is_refused(registry, tmp_path, bad):
    with pytest.raises((ModelNotFound, ConfigError)):
        artifact_folder(str(tmp_path), bad)


def test_a_lake_on_object_storage_needs_a_tracking_server():
    with pytest.raises(ConfigError, match="mlflow_tracking_uri"):
        tracking_uri("s3a://bucket/lake")
    assert tracking_uri("s3a://bucket/lake", "http://mlflow:5000") == "http://mlflow:5000"


def test_a_folder_registered_before_keeps_its_version(registry, tmp_path):
    again = registry.register(tmp_path / "models" / "20261202-bbbbbbbb", {}, [], {})
    assert again.number == 2 and [v.number for v in registry.versions()] == [3, 2, 1]


def test_evaluated_metrics_land_on_the_training_run(registry):
    registry.log_metrics(1, {"crossrec.test_ndcg@10.books.all": 0.25})
    run = registry.client.get_run(registry.version(1).run_id)
    assert run.data.metrics["crossrec.test_ndcg_at_10.books.all"] == 0.25 and run.data.params["train.lr"] == "0.001"


def test_maintain_keeps_the_newest_versions_and_the_champion(registry, tmp_path):
    registry.set_champion(1)
    cfg = resolve_config(overrides={"lake_root": str(tmp_path), "keep_models": 1})
    removed = _drop_old_models(cfg)
    assert removed == ["version 2 (20261202-bbbbbbbb)"]
    assert [(v.number, v.is_champion) for v in registry.versions()] == [(3, False), (1, True)]
    assert not (tmp_path / "models" / "20261202-bbbbbbbb").exists(), "its artifact folder went with it"
    assert (tmp_path / "models" / "20261201-aaaaaaaa").is_dir() and (tmp_path / "models" / "20261203-cccccccc").is_dir()
    with pytest.raises(ValueError, match="holds @champion"):
        registry.delete(1)
