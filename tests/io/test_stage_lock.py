"""crossrec.io.runs.stage_lock on a local lake and on an S3 lake (moto's server): one run of a stage at a time."""
from __future__ import annotations

import logging

import pytest

from crossrec.io.runs import StageBusy, _lock_store, stage_lock
from support import moto_s3


@pytest.fixture(params=["local", "s3"])
def lake(request, monkeypatch, tmp_path):
    if request.param == "local":
        yield str(tmp_path / "lake")
        return
    server, env = moto_s3("bkt")
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    yield "s3a://bkt/lake"
    server.stop()


def test_a_second_holder_is_refused_naming_the_first_and_the_lock_goes_with_its_holder(lake):
    with stage_lock(lake, "clean", "run-a"):
        with pytest.raises(StageBusy, match="another clean run holds .*_locks/clean.lock: run 'run-a'"):
            with stage_lock(lake, "clean", "run-b"):
                pass
        with stage_lock(lake, "features", "run-b"):  # another stage's lock is its own
            pass
    with stage_lock(lake, "clean", "run-b"):  # released on exit
        assert _lock_store(lake, "clean").read()[0]["run_id"] == "run-b"
    assert _lock_store(lake, "clean").read()[0] == {}, "released after an exception-free run"
    with pytest.raises(ValueError):
        with stage_lock(lake, "clean", "run-c"):
            raise ValueError("the stage failed")
    assert _lock_store(lake, "clean").read()[0] == {}, "released after a failed run too"


def test_a_stale_lock_is_taken_over_and_its_old_holder_leaves_the_new_one_alone(lake, caplog):
    caplog.set_level(logging.WARNING, logger="crossrec.io.runs")
    old = stage_lock(lake, "score", "old-run")
    old.__enter__()
    new = stage_lock(lake, "score", "new-run", stale_after_s=-1)  # any lock counts as stale
    new.__enter__()
    assert "taking over a stale lock" in caplog.text and "old-run" in caplog.text
    old.__exit__(None, None, None)  # the old holder ends while the new one runs
    assert _lock_store(lake, "score").read()[0]["run_id"] == "new-run", "the old holder removed only its own lock"
    new.__exit__(None, None, None)
    assert _lock_store(lake, "score").read()[0] == {}


def test_object_stores_without_a_lock_warn(caplog):
    caplog.set_level(logging.WARNING, logger="crossrec.io.runs")
    with stage_lock("gs://bucket/lake", "ingest", "run-a"):
        pass
    assert "no lock on a lake in this object store (gs)" in caplog.text
