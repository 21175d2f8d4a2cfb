"""``crossrec forget`` end to end: a person leaves every table (bronze through the identity map, silver, gold) and
the published run; nobody else changes; the audit names the person by a hash only."""
from __future__ import annotations

import shutil
from pathlib import Path

import pandas as pd
import pytest
from deltalake import DeltaTable

from crossrec.data.forget import user_ref
from crossrec.data.pseudonym import pseudonym
from crossrec.io.readers import list_tables, read_recommendations, read_table
from crossrec_jobs import forget
from support import SCORE_DAY, TEST_KEY, job_args, write_raw

pytestmark = pytest.mark.spark

ERASABLE = ["bronze.interactions", "bronze.identity_map", "silver.interactions", "silver.quarantine", "silver.identity_map",
            "gold.user_sequences", "gold.recommendations"]


def _frames(lake: Path) -> dict[str, pd.DataFrame]:
    present = {t.table for t in list_tables(str(lake))}
    return {t: read_table(str(lake), t) for t in ERASABLE if t in present}


def _rows(df: pd.DataFrame) -> pd.DataFrame:
    return df.astype(str).sort_values(list(df.columns)).reset_index(drop=True)


def _forget(lake: Path, key: Path, person: str, tmp_path: Path, capsys, *extra: str) -> None:
    users = tmp_path / "erase.txt"  # a file: the raw id stays out of the process list
    users.write_text(person + "\n")
    args = ["--users-file", str(users), "--lake-root", str(lake), "--pseudonym-key-file", str(key),
            "--run-date", SCORE_DAY, "--spark-master", "local[2]", *extra]
    assert forget.main(args) == 0
    assert person not in capsys.readouterr().err, "the raw id is not logged"


def _check_only_theirs_are_gone(lake: Path, before: dict, mine: dict, me: str) -> None:
    after = _frames(lake)
    assert set(after) == set(before)
    for t in before:
        pd.testing.assert_frame_equal(_rows(after[t]), _rows(before[t][~mine[t]]), obj=t)
    audit = read_table(str(lake), "ops.erasures")
    assert set(audit.user_ref) == {user_ref(me)} and me not in audit.to_string()
    deleted = dict(zip(audit.table_name, audit.rows_deleted))
    assert {t: deleted.get(t, 0) for t in before} == {t: int(mine[t].sum()) for t in before}


def test_forget_follows_the_identity_map_through_bronze_and_silver(spark, tmp_path, key_file, capsys):
    """u1 reads books as ``u1`` and watches movies as ``m-1`` (the identity map joins them)."""
    from crossrec_jobs import clean, ingest

    raw, lake = write_raw(tmp_path / "raw"), tmp_path / "lake"
    args = job_args(raw, lake, key_file, "--no-validate")
    assert ingest.main(args) == 0 and clean.main(args) == 0
    before = _frames(lake)
    me = pseudonym("u1", TEST_KEY.encode())
    bi, ids = before["bronze.interactions"], before["bronze.identity_map"]
    mine = {"bronze.interactions": bi.user_id.isin({"u1", "m-1"}), "bronze.identity_map": ids.global_user_id == "u1",
            "silver.interactions": before["silver.interactions"].user_id == me,
            "silver.quarantine": before["silver.quarantine"].record.str.contains(me, regex=False),
            "silver.identity_map": before["silver.identity_map"].global_user_id == me}
    assert set(bi[mine["bronze.interactions"]].domain) == {"books", "movies"} and mine["bronze.identity_map"].sum() == 1
    _forget(lake, key_file, "u1", tmp_path, capsys)
    _check_only_theirs_are_gone(lake, before, mine, me)
    assert "u1" not in read_table(str(lake), "ops.erasures").to_string()


def test_forget_erases_gold_and_republishes_the_run_without_the_user(spark, scored_lake, tmp_path, capsys):
    lake = tmp_path / "lake"
    shutil.copytree(scored_lake["lake"], lake)
    before = _frames(lake)
    person = before["bronze.interactions"].user_id.iloc[0]
    me = pseudonym(person, TEST_KEY.encode())
    mine = {t: (df.record.str.contains(me, regex=False) if t == "silver.quarantine" else
                df.global_user_id == me if t == "silver.identity_map" else
                df.user_id == (person if t.startswith("bronze") else me)) for t, df in before.items()}
    assert all(mine[t].sum() > 0 for t in ("silver.interactions", "gold.user_sequences", "gold.recommendations"))
    published_before = DeltaTable(str(lake / "gold" / "recommendations")).metadata().configuration[
        "crossrec.published.version"]
    assert me in set(read_recommendations(str(lake)).user_id)

    _forget(lake, scored_lake["key"], person, tmp_path, capsys)
    _check_only_theirs_are_gone(lake, before, mine, me)
    recs = read_recommendations(str(lake))  # the published run, re-published at the version without the user
    assert me not in set(recs.user_id) and len(recs) == (~mine["gold.recommendations"]).sum()
    conf = DeltaTable(str(lake / "gold" / "recommendations")).metadata().configuration
    assert int(conf["crossrec.published.version"]) > int(published_before)
    assert conf["crossrec.published.run_date"] == SCORE_DAY

    # again, by pseudonym: nothing left to delete, still a success; a non-pseudonym is a clear error
    rows = {t: len(f) for t, f in _frames(lake).items()}
    common = ["--lake-root", str(lake), "--pseudonym-key-file", str(scored_lake["key"]), "--spark-master", "local[2]"]
    assert forget.main([me, "--pseudonymized", *common]) == 0
    assert {t: len(f) for t, f in _frames(lake).items()} == rows
    assert forget.main(["not-a-pseudonym", "--pseudonymized", *common]) == 2
