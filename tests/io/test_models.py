"""Tests of crossrec.io.models: a model version is a folder name, so _latest or a flag cannot leave <lake>/models."""
from __future__ import annotations

import pytest

from crossrec.io.models import artifact_folder


def test_latest_names_an_artifact_under_models(tmp_path):
    (tmp_path / "models" / "20261204-abcd1234").mkdir(parents=True)
    assert artifact_folder(str(tmp_path), None) is None  # no _latest yet
    (tmp_path / "models" / "_latest").write_text("20261204-abcd1234\n")
    assert artifact_folder(str(tmp_path), None) == f"{tmp_path}/models/20261204-abcd1234"
    assert artifact_folder(str(tmp_path), "20261204-abcd1234") == f"{tmp_path}/models/20261204-abcd1234"
    with pytest.raises(FileNotFoundError, match="does not exist"):
        artifact_folder(str(tmp_path), "20261204-00000000")


@pytest.mark.parametrize("bad", ["../../etc", "/etc/passwd", "a/b", "..", "", ".hidden", "x" * 200])
def test_a_latest_or_version_that_is_not_a_folder_name_is_refused(tmp_path, bad):
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "_latest").write_text(bad + "\n")
    with pytest.raises(ValueError, match="_latest: .* is not a model version"):
        artifact_folder(str(tmp_path), None)
    if bad and not (tmp_path / bad).exists():
        with pytest.raises(ValueError, match="--model-version: .* is not a model version"):
            artifact_folder(str(tmp_path), bad)
