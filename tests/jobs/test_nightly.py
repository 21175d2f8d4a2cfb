"""Nightly runs: a second night merged into the lake gives the same tables as a full rebuild; a kill between two
table commits, a validation failure and a second concurrent run leave the last recorded run intact."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest

from support import TEST_KEY, job_args, write_raw

pytestmark = [pytest.mark.spark, pytest.mark.slow]

NIGHT1, NIGHT2 = "2024-06-30", "2024-07-01"


def _night1(root: Path) -> Path:
    """The tiny data set with every file set as a folder (a night adds files to them)."""
    raw = write_raw(root / "raw")
    spec = json.loads((raw / "dataset.json").read_text())
    for domain, kinds in spec["domains"].items():
        for kind, fs in kinds.items():
            src = raw / fs["path"]
            folder = raw / domain / kind
            folder.mkdir(exist_ok=True)
            src.rename(folder / f"night1{src.suffix}")
            fs["path"] = f"{domain}/{kind}"
    ids = raw / "identity_map.csv"
    (raw / "identity_map").mkdir()
    ids.rename(raw / "identity_map" / "night1.csv")
    spec["identity_map"]["path"] = "identity_map"
    (raw / "dataset.json").write_text(json.dumps(spec))
    return raw


def _night2(raw: Path) -> None:
    """New rows of old and new users, an exact repeat of a night-1 row, a new item, a changed item, a new mapped user."""
    (raw / "books/interactions/night2.csv").write_text(
        "reader,isbn,read_at,action,stars\n"
        "u1,b1,2021-01-01T10:00:00Z,view,1\n"  # night 1's row again: a duplicate
        "u1,b3,2021-02-01T10:00:00Z,view,1\n"  # an old user on a new item
        "u2,b2,2021-02-02T10:00:00Z,purchase,4\n"
        "u7,b3,2021-02-03T10:00:00Z,view,\n"  # a new user
        "u8,b9,2021-02-04T10:00:00Z,view,\n",  # an item in no catalog: quarantined
        encoding="utf-8")
    (raw / "books/items/night2.csv").write_text(
        "isbn,title,genre,blurb,author\n"
        "b3,Moon Harvest,scifi,Farming on the moon.,Cy Writer\n"
        "b2,Sourdough Secrets (2nd edition),cooking,More bread for everyone.,Bob Baker\n", encoding="utf-8")
    (raw / "movies/interactions/night2.jsonl").write_text(
        json.dumps({"uid": "m-9", "movie_id": "mv2", "ts": 1612000000, "event": "view"}) + "\n"
        + json.dumps({"uid": "m-1", "movie_id": "mv2", "ts": 1612100000, "event": "view"}) + "\n", encoding="utf-8")
    (raw / "identity_map/night2.csv").write_text(  # a new user, night 1's mapping again, a mapping with no person
        "domain,local_user,person\nmovies,m-9,u7\nmovies,m-1,u1\nbooks,u5,\n", encoding="utf-8")


def _args(raw: Path, lake: Path, key: Path, day: str, *extra: str) -> list[str]:
    """A night's job arguments without the tables' checks: only the fixture's nights (a full run, then a merge)
    and the failed-check test validate; the checks themselves are tested in tests/quality and tests/jobs."""
    return job_args(raw, lake, key, "--run-date", day, "--no-validate", *extra)


def _stages(raw: Path, lake: Path, key: Path, day: str, *extra: str, validate: bool = False) -> None:
    from crossrec_jobs import clean, features, ingest

    args = job_args(raw, lake, key, "--run-date", day) if validate else _args(raw, lake, key, day)
    assert ingest.main(args) == 0
    assert clean.main([*args, *extra]) == 0
    assert features.main([*args, *extra]) == 0


def _table(lake: Path, table: str, drop: tuple[str, ...] = ()) -> pd.DataFrame:
    from crossrec.io.readers import read_table

    df = read_table(str(lake), table)
    df = df.drop(columns=[c for c in drop if c in df.columns])
    if "record" in df.columns and drop:  # the quarantined bronze row: its ingest stamps differ by construction too
        df["record"] = df["record"].map(lambda r: {k: v for k, v in json.loads(r).items() if k not in ("run_id", "ingested_at")})
    df = df.map(lambda v: json.dumps(v.tolist() if hasattr(v, "tolist") else v, sort_keys=True, default=str))
    return df.sort_values(list(df.columns)).reset_index(drop=True)


SILVER = ("silver.interactions", "silver.items", "silver.quarantine", "silver.identity_map")
GOLD = ("gold.user_sequences", "gold.item_index", "gold.item_embeddings")


@pytest.fixture(scope="module")
def two_nights(spark, tmp_path_factory) -> dict:
    """Lake A: night 1, then night 2 merged (incremental). Lake B: both nights' files in one full run."""
    root = tmp_path_factory.mktemp("nightly")
    key = root / "key"
    key.write_text(TEST_KEY)
    raw = _night1(root)
    lake = root / "lake"
    _stages(raw, lake, key, NIGHT1, validate=True)
    _night2(raw)
    _stages(raw, lake, key, NIGHT2, validate=True)  # the checks of a merge: the rows it added or changed
    snapshot = root / "after_night2"
    shutil.copytree(lake, snapshot)
    fresh = root / "fresh"
    _stages(raw, fresh, key, NIGHT2)
    return {"raw": raw, "lake": lake, "snapshot": snapshot, "fresh": fresh, "key": key}


def test_second_night_runs_incrementally(two_nights):
    from crossrec.io.runs import Ledger

    runs = Ledger(str(two_nights["snapshot"])).succeeded()
    modes = [(r["stage"], r["run_date"], r["mode"]) for r in runs if r["stage"] in ("clean", "features")]
    assert modes == [("clean", NIGHT1, "full"), ("features", NIGHT1, "full"),
                     ("clean", NIGHT2, "incremental"), ("features", NIGHT2, "incremental")]
    features2 = [r for r in runs if r["stage"] == "features"][-1]
    assert features2["details"]["users_changed"] == 3  # u1 (also as m-1), u2, u7 (also as m-9); u8 was quarantined


def test_second_night_gives_the_silver_of_a_full_rebuild_of_both_nights(two_nights):
    # run ids and ingest times differ by construction (lake B ingested both nights in one run)
    for table in (*SILVER, "silver.item_entities"):  # night 2's entities appended (a new item, a changed title)
        merged = _table(two_nights["snapshot"], table, drop=("run_id",))
        full = _table(two_nights["fresh"], table, drop=("run_id",))
        pd.testing.assert_frame_equal(merged, full, obj=table)


def test_second_night_gives_the_gold_of_a_full_refresh(two_nights, tmp_path):
    from crossrec_jobs import clean, features

    lake = tmp_path / "refreshed"
    shutil.copytree(two_nights["snapshot"], lake)
    args = _args(two_nights["raw"], lake, two_nights["key"], NIGHT2, "--full-refresh")
    assert clean.main(args) == 0 and features.main(args) == 0
    for table in (*SILVER, *GOLD):
        pd.testing.assert_frame_equal(_table(two_nights["snapshot"], table), _table(lake, table), obj=table)


def test_a_night_that_changes_an_entity_rewrites_the_entities_as_a_full_clean_would(two_nights, tmp_path):
    from crossrec.io.runs import Ledger
    from crossrec_jobs import clean, ingest

    raw, lake = _copy_night2(two_nights, tmp_path)
    (raw / "books/items/night3.csv").write_text(  # b2's author replaced: one entity removed, one added
        "isbn,title,genre,blurb,author\nb2,Sourdough Secrets (2nd edition),cooking,More bread for everyone.,Bea Baker\n",
        encoding="utf-8")
    args = _args(raw, lake, two_nights["key"], "2024-07-02")
    assert ingest.main(args) == 0 and clean.main(args) == 0
    run = Ledger(str(lake)).last("clean")
    assert run["mode"] == "incremental" and run["writes"]["silver.item_entities"] > Ledger(
        str(two_nights["snapshot"])).recorded_versions()["silver.item_entities"]
    entities = _table(lake, "silver.item_entities", drop=("run_id",))
    names = set(entities["entity"].map(json.loads))
    assert "author:bea baker" in names and "author:bob baker" not in names
    refreshed = tmp_path / "refreshed"
    shutil.copytree(lake, refreshed)
    assert clean.main(_args(raw, refreshed, two_nights["key"], "2024-07-02", "--full-refresh")) == 0
    pd.testing.assert_frame_equal(entities, _table(refreshed, "silver.item_entities", drop=("run_id",)))


def test_item_ids_are_stable_across_nights(two_nights):
    from crossrec.io.readers import read_table

    night1 = read_table(str(two_nights["snapshot"]), "gold.item_index", version=1)
    night2 = read_table(str(two_nights["snapshot"]), "gold.item_index")
    both = night1.merge(night2, on=["domain", "item_id"], suffixes=("_1", "_2"))
    assert len(both) == len(night1)
    assert (both["item_idx_1"] == both["item_idx_2"]).all() and (both["domain_item_idx_1"] == both["domain_item_idx_2"]).all()
    new = night2[~night2["item_id"].isin(night1["item_id"])]
    assert list(new["item_id"]) == ["b3"] and int(new["item_idx"].iloc[0]) == int(night1["item_idx"].max()) + 1


@pytest.mark.parametrize("mapping, mode, because", [
    ("movies,m-2,u2", "incremental", None),  # the mapping silver was built with, sent again
    ("movies,m-1,u9", "full", "another global id"),  # m-1's rows move from u1 to u9
    ("movies,m-3,u3", "full", "under their own id"),  # m-3's night-1 rows are in silver under m-3's own id
])
def test_a_night_rebuilds_silver_when_its_identity_map_moves_rows_already_there(two_nights, tmp_path, mapping, mode, because):
    from crossrec.io.runs import Ledger
    from crossrec_jobs import clean, ingest

    raw, lake = tmp_path / "raw", tmp_path / "lake"
    shutil.copytree(two_nights["raw"], raw)
    shutil.copytree(two_nights["snapshot"], lake)
    (raw / "identity_map/night3.csv").write_text(f"domain,local_user,person\n{mapping}\n", encoding="utf-8")
    args = _args(raw, lake, two_nights["key"], "2024-07-02")
    assert ingest.main(args) == 0 and clean.main(args) == 0
    run = Ledger(str(lake)).last("clean")
    assert run["mode"] == mode
    assert (because is None and "full_because" not in run["details"]) or because in run["details"]["full_because"]
    if mode == "full" and "another" in because:
        return  # one run over all files ingests both mappings at once: there the smallest pseudonym wins, not the later
    fresh = tmp_path / "fresh"  # whichever way it went, silver is what one full run over all files gives
    assert ingest.main(_args(raw, fresh, two_nights["key"], "2024-07-02")) == 0
    assert clean.main(_args(raw, fresh, two_nights["key"], "2024-07-02")) == 0
    for table in SILVER:  # the lake's night-1/2 rows came from the fixture's raw folder, the fresh lake's from the copy
        merged = _relative(_table(lake, table, drop=("run_id",)), two_nights["raw"])
        pd.testing.assert_frame_equal(merged, _relative(_table(fresh, table, drop=("run_id",)), raw), obj=table)


def _relative(df: pd.DataFrame, raw: Path) -> pd.DataFrame:
    df = df.map(lambda v: v.replace(str(raw), "<raw>"))
    return df.sort_values(list(df.columns)).reset_index(drop=True)


# --------------------------------------------------------------------------- faults
class Killed(BaseException):
    """Stands for the process dying between two table commits (not an error a stage handles)."""


def _night3(raw: Path, bad: bool = False) -> None:
    rows = "u2,b3,2021-03-01T10:00:00Z,view,\nu9,b1,2021-03-02T10:00:00Z,view,\n" + ("u9,BAD,2021-03-03T10:00:00Z,view,\n" if bad else "")
    (raw / "books/interactions/night3.csv").write_text("reader,isbn,read_at,action,stars\n" + rows, encoding="utf-8")
    (raw / "books/items/night3.csv").write_text("isbn,title,genre,blurb,author\nb1,The Galaxy Chronicle (revised),scifi,Space.,Ann Author\n", encoding="utf-8")


def _copy_night2(two_nights, root: Path, bad: bool = False) -> tuple[Path, Path]:
    raw, lake = root / "raw", root / "lake"
    shutil.copytree(two_nights["raw"], raw)
    shutil.copytree(two_nights["snapshot"], lake)
    _night3(raw, bad)
    return raw, lake


def _fail_on_call(monkeypatch, module, name: str, nth: int) -> None:
    """Let the first ``nth - 1`` calls of ``module.name`` commit, then die before the ``nth``."""
    real, calls = getattr(module, name), []

    def wrapper(*a, **kw):
        calls.append(1)
        if len(calls) == nth:
            raise Killed(f"killed before {name} call {nth}")
        return real(*a, **kw)

    monkeypatch.setattr(module, name, wrapper)


def test_a_kill_between_table_commits_leaves_the_recorded_run_and_the_rerun_completes(two_nights, tmp_path, monkeypatch):
    import crossrec.data.gold as gold
    import crossrec.data.silver as silver
    from crossrec.io.runs import Ledger
    from crossrec_jobs import clean, features, ingest

    key = two_nights["key"]
    raw, lake = _copy_night2(two_nights, tmp_path)
    ok_lake = tmp_path / "fine"
    shutil.copytree(two_nights["snapshot"], ok_lake)
    _stages(raw, ok_lake, key, "2024-07-02")

    args = _args(raw, lake, key, "2024-07-02")
    assert ingest.main(args) == 0
    recorded = Ledger(str(lake)).recorded_versions()
    with monkeypatch.context() as m:
        _fail_on_call(m, silver, "write_table", 1)  # silver.items merged, silver.interactions not appended
        with pytest.raises(Killed):
            clean.main(args)
    after = Ledger(str(lake)).recorded_versions()
    assert {t: after[t] for t in SILVER} == {t: recorded[t] for t in SILVER}  # the unfinished run is not recorded
    # the next stage reads the recorded (night 2) silver: nothing changed for it
    assert features.main(args) == 0
    assert Ledger(str(lake)).last("features")["details"]["users_changed"] == 0

    assert clean.main(args) == 0  # the re-run restores silver.items and completes
    assert [r["writes"] for r in Ledger(str(lake)).succeeded("rollback")][-1].keys() == {"silver.items"}
    with monkeypatch.context() as m:
        _fail_on_call(m, gold, "write_table", 1)  # the changed users' sequence rows deleted, their new rows not appended
        with pytest.raises(Killed):
            features.main(args)
    assert features.main(args) == 0
    for table in (*SILVER, *GOLD):
        pd.testing.assert_frame_equal(_table(lake, table), _table(ok_lake, table), obj=table)


def test_a_failed_validation_fails_again_on_every_retry(two_nights, tmp_path, monkeypatch):
    from crossrec.io.readers import read_table
    from crossrec.io.runs import Ledger
    from crossrec.quality import validate
    from crossrec_jobs import clean, ingest

    raw, lake = _copy_night2(two_nights, tmp_path, bad=True)
    real = validate.Validator.check

    def check(self, contract, df, *a, **kw):  # a suite that rejects the item id BAD
        if contract.table == "bronze.interactions" and df.where("item_id = 'BAD'").take(1):
            report = validate.ValidationReport(contract.table, kw.get("version"), False, None,
                                               [{"expectation": "no BAD item", "target": "item_id", "observed": "BAD", "success": False}])
            raise validate.ValidationFailed(report)
        return real(self, contract, df, *a, **kw)

    monkeypatch.setattr(validate.Validator, "check", check)
    args = job_args(raw, lake, two_nights["key"], "--run-date", "2024-07-02")
    rows_before = len(read_table(str(lake), "bronze.interactions"))
    for _ in range(3):  # the DAG's retries: the files must not count as seen
        assert ingest.main(args) == 3
    recorded = Ledger(str(lake)).recorded_versions()["bronze.interactions"]
    assert len(read_table(str(lake), "bronze.interactions", version=recorded)) == rows_before  # readers see no failed row
    assert clean.main(args) == 0
    assert Ledger(str(lake)).last("clean")["details"] and len(read_table(str(lake), "silver.interactions")) == len(
        read_table(str(two_nights["snapshot"]), "silver.interactions"))  # nothing of the failed night reached silver
    (raw / "books/interactions/night3.csv").write_text("reader,isbn,read_at,action,stars\nu2,b3,2021-03-01T10:00:00Z,view,\n")
    assert ingest.main(args) == 0  # the data fixed: the run goes through
    assert len(read_table(str(lake), "bronze.interactions")) == rows_before + 1


def test_a_second_run_of_a_stage_is_refused_while_one_holds_the_lake(two_nights, tmp_path, capsys):
    from crossrec.io.runs import stage_lock
    from crossrec_jobs import ingest

    raw, lake = _copy_night2(two_nights, tmp_path)
    args = _args(raw, lake, two_nights["key"], "2024-07-02")
    with stage_lock(str(lake), "ingest", "ingest-running"):
        assert ingest.main(args) == 5
    err = capsys.readouterr().err
    assert "another ingest run holds" in err and "ingest-running" in err
    assert ingest.main(args) == 0  # the lock is gone with its holder


# --------------------------------------------------------------------------- upkeep and publishing
def test_maintain_compacts_small_files_only_and_is_recorded_so_the_next_night_rolls_nothing_back(two_nights, tmp_path):
    """One lake through three maintain runs (each on the one before): a threshold no file is under, the default one,
    then Z-order with VACUUM; then night 3 runs on the maintained lake."""
    from crossrec.io.runs import Ledger
    from crossrec_jobs import maintain

    raw, lake = _copy_night2(two_nights, tmp_path)
    args = job_args(raw, lake, two_nights["key"], "--run-date", "2024-07-02")[2:]  # no --raw-dir
    assert maintain.main([*args, "--compact-file-mb", "0.0005"]) == 0  # every file is bigger than 512 bytes
    tables = Ledger(str(lake)).last("maintain")["details"]["tables"]
    assert {t: i["files_removed"] for t, i in tables.items() if i["files_removed"]} == {}
    assert maintain.main(args) == 0  # the default threshold: night 2 left silver.interactions two small files a domain
    assert Ledger(str(lake)).last("maintain")["details"]["tables"]["silver.interactions"]["files_removed"] >= 2

    files_before = len(list((lake / "silver/interactions").rglob("*.parquet")))
    assert maintain.main([*args, "--zorder", "--vacuum-retention-hours", "0"]) == 0
    run = Ledger(str(lake)).last("maintain")
    assert run["mode"] == "zorder" and "silver.interactions" in run["writes"]
    assert run["details"]["tables"]["silver.interactions"]["zorder_by"] == ["user_id"]
    assert len(list((lake / "silver/interactions").rglob("*.parquet"))) < files_before  # vacuumed after compaction
    _stages(raw, lake, two_nights["key"], "2024-07-02")  # night 3 on the maintained lake
    assert not Ledger(str(lake)).succeeded("rollback"), "maintain's commits are recorded: nothing to roll back"
    assert Ledger(str(lake)).last("clean")["mode"] == "incremental"


def test_publish_moves_forward_only(scored_lake, spark, tmp_path):
    import datetime as dt

    from crossrec.io.delta import latest_version
    from crossrec.score import stage as S

    lake = tmp_path / "lake"
    shutil.copytree(scored_lake["lake"], lake)
    path = str(lake / "gold/recommendations")
    props = S.published(spark, path)
    older = dt.date.fromisoformat(props["run_date"]) - dt.timedelta(days=1)
    with pytest.raises(S.PublishBackwards, match="older than the published"):
        S.publish(spark, path, int(props["version"]), older, props["model_version"], int(props["k"]))
    assert S.published(spark, path)["run_date"] == props["run_date"]
    S.publish(spark, path, latest_version(path), older, props["model_version"], int(props["k"]), force=True)
    assert S.published(spark, path)["run_date"] == older.isoformat()
