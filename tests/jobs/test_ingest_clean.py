"""The ingest and clean jobs end to end: real Spark, Delta, Great Expectations, on tiny raw data sets.

One module fixture builds a raw set holding every kind of bad input and runs ingest -> clean twice on
the same lake; the tests read what those runs left. Inputs that must stop a run get their own small runs.
"""
from __future__ import annotations

import hashlib
import hmac
import json
import re
import shutil
from pathlib import Path

import pytest
from deltalake import DeltaTable

from crossrec.io.readers import count_rows, list_tables, read_table
from crossrec_jobs import clean as clean_job
from crossrec_jobs import ingest as ingest_job
from support import TEST_KEY, job_args, write_raw

pytestmark = pytest.mark.spark

TABLES = ["bronze.interactions", "bronze.items", "bronze.identity_map", "silver.interactions", "silver.items", "silver.quarantine"]
GOOD_BOOKS = [
    "u1,b1,2021-01-01T10:00:00Z,view,1",
    "u1,b2,2021-01-02T10:00:00Z,purchase,3",
    "u2,b1,2021-01-03T10:00:00Z,view,",
]
BAD_BOOKS = {
    "u3,b1": "malformed_line",
    "u1,b1,2021-01-05T00:00:00Z,view,lots": "unparseable_weight",
    "u1,b1,2099-01-01T00:00:00Z,view,1": "timestamp_out_of_range",
    "u1,b1,1990-01-01T00:00:00Z,view,1": "timestamp_out_of_range",
    "u2,b9,2021-01-05T00:00:00Z,view,1": "item_not_in_catalog",
}
LATIN1_ROW = b"caf\xe9,b1,2021-01-06T00:00:00Z,view,1\n"  # not UTF-8: invalid_encoding
HUGE = "word " * 400_000  # a 2 MB blurb


def build_dirty_raw(root: Path) -> Path:
    movies = [
        {"uid": "m-1", "movie_id": "mv1", "ts": 1609495200, "event": "view"},
        {"uid": "m-2", "movie_id": "mv2", "ts": 1609581600, "event": "view"},
        {"uid": "m-3", "movie_id": "mv1", "ts": 1609668000, "event": "rating"},
        {"uid": "m-3", "movie_id": "mv2", "ts": "not-a-date", "event": "view"},
    ]
    write_raw(
        root,
        books_rows=GOOD_BOOKS + list(BAD_BOOKS) + [GOOD_BOOKS[0]],  # the last: an exact duplicate
        movies_rows=movies,
        books_items=["b1,The Galaxy Chronicle,scifi,A story of space.,Ann Author", f"b2,Sourdough Secrets,cooking,{HUGE},Bob Baker"],
        identity_rows=["movies,m-1,u1", "movies,m-2,u2", "movies,m-2,u9", "games,g-1,u1"],
    )
    with open(root / "movies" / "interactions.jsonl", "a", encoding="utf-8") as fh:
        fh.write("{not json\n")
    with open(root / "books" / "interactions.csv", "ab") as fh:
        fh.write(LATIN1_ROW)
    with open(root / "books" / "items.csv", "ab") as fh:
        fh.write(b"b3,Cr\xe8me,food,Caf\xe9 desserts.,Chef\n")  # bad bytes in text only: kept, counted
    # the books interactions become a folder holding the file and a byte-identical copy of it
    folder = root / "books" / "interactions"
    folder.mkdir()
    shutil.move(root / "books" / "interactions.csv", folder / "part-0.csv")
    shutil.copy(folder / "part-0.csv", folder / "part-1-copy.csv")
    spec = json.loads((root / "dataset.json").read_text())
    spec["domains"]["books"]["interactions"]["path"] = "books/interactions"
    (root / "dataset.json").write_text(json.dumps(spec))
    return root


def counts(lake: Path) -> dict[str, int]:
    """Rows of the data tables (ops.* grow with every run by design)."""
    return {t.table: t.rows for t in list_tables(str(lake)) if not t.table.startswith("ops.")}


@pytest.fixture(scope="module")
def runs(spark, tmp_path_factory):
    base = tmp_path_factory.mktemp("dirty")
    raw, lake = build_dirty_raw(base / "raw"), base / "lake"
    key = base / "key"
    key.write_text(TEST_KEY)
    args = job_args(raw, lake, key)
    out = {"raw": raw, "lake": lake}
    clean_args = [*args, "--max-quarantine-share", "1"]  # a file made mostly of bad rows on purpose
    for i in (1, 2):
        assert ingest_job.main(args) == 0
        assert clean_job.main(clean_args) == 0
        out[f"counts{i}"] = counts(lake)
        out[f"accounting{i}"] = read_table(str(lake), "ops.accounting")
    return out


def test_every_table_is_a_real_delta_table_readable_without_spark(runs, spark):
    for t in TABLES:
        path = runs["lake"] / t.replace(".", "/")
        assert (path / "_delta_log").is_dir(), t
        assert count_rows(DeltaTable(str(path))) == spark.read.format("delta").load(str(path)).count()
    assert runs["counts1"]["silver.interactions"] == 3 + 3  # books + movies good rows


def test_rerun_changes_no_row_count(runs):
    from crossrec.io.runs import Ledger

    assert runs["counts1"] == runs["counts2"]
    assert set(TABLES) <= set(runs["counts2"])
    runs_ = Ledger(str(runs["lake"])).succeeded()
    assert [(r["stage"], r["mode"]) for r in runs_ if r["stage"] == "clean"] == [("clean", "full"), ("clean", "incremental")]


def test_second_ingest_skips_every_file(runs):
    acc = runs["accounting2"]
    ing = acc[acc.stage == "ingest"]
    assert (ing.rows_in == 0).all() and (ing.rows_out == 0).all()
    books = ing[(ing.table_name == "bronze.interactions") & (ing.domain == "books")].iloc[0]
    assert books.skipped == 10  # the rows of part-0.csv: 3 good + 5 bad + 1 duplicate + 1 latin-1
    assert len(json.loads(books.details)["files_seen_before"]) == 2  # the copy has the same checksum


def test_duplicate_file_content_is_skipped_and_reported(runs):
    acc = runs["accounting1"]
    books = acc[(acc.stage == "ingest") & (acc.table_name == "bronze.interactions") & (acc.domain == "books")].iloc[0]
    details = json.loads(books.details)
    assert [Path(p).name for p in details["files_duplicate_content"]] == ["part-1-copy.csv"]
    assert books.rows_out == 10  # part-0 only
    bronze = read_table(str(runs["lake"]), "bronze.interactions")
    assert set(Path(p).name for p in bronze.source_file) == {"part-0.csv", "interactions.jsonl"}


def test_accounting_balances_per_table_and_domain(runs):
    second = runs["accounting2"]  # the re-run merged nothing new
    assert (second[second.stage == "clean"].rows_in == 0).all()
    acc = runs["accounting1"]
    assert (acc.rows_in == acc.rows_out + acc.quarantined + acc.duplicates).all()
    cl = acc[acc.stage == "clean"].set_index(["table_name", "domain"])
    assert tuple(cl.loc[("silver.interactions", "books"), ["rows_in", "rows_out", "quarantined", "duplicates"]]) == (10, 3, 6, 1)
    assert tuple(cl.loc[("silver.interactions", "movies"), ["rows_in", "rows_out", "quarantined", "duplicates"]]) == (5, 3, 2, 0)
    assert tuple(cl.loc[("silver.identity_map", "movies"), ["rows_in", "rows_out", "quarantined", "duplicates"]]) == (3, 2, 1, 0)
    assert ("silver.item_entities", "books") in cl.index  # books declare "author"; movies have no attribute
    ent = read_table(str(runs["lake"]), "silver.item_entities")
    assert cl.loc[("silver.item_entities", "books"), "rows_out"] == len(ent) > 0
    assert set(ent.domain) == {"books"} and set(ent.entity_type) == {"author"}
    assert (ent.entity == "author:" + ent.value).all() and (ent.value == ent.value.str.lower().str.strip()).all()
    items = json.loads(cl.loc[("silver.items", "books"), "details"])
    assert items["text_truncated"] == 1 and items["text_with_invalid_bytes"] == 1


def test_each_bad_row_is_quarantined_with_its_reason(runs):
    q = read_table(str(runs["lake"]), "silver.quarantine")
    books = q[(q.source_table == "bronze.interactions") & (q.domain == "books")]
    want = sorted(list(BAD_BOOKS.values()) + ["invalid_encoding"])
    assert sorted(books.reason) == want
    movies = q[(q.source_table == "bronze.interactions") & (q.domain == "movies")]
    assert sorted(movies.reason) == ["malformed_line", "unparseable_timestamp"]
    ids = q[q.source_table == "bronze.identity_map"]
    assert sorted(ids.reason) == ["identity_conflict", "unknown_domain"]
    malformed = books[books.reason == "malformed_line"].iloc[0]
    assert malformed.detail.startswith("a line of 5 characters") and "corrupt_record" not in json.loads(malformed.record)
    raw_ids = {"u1", "u2", "u3", "u9", "m-1", "m-2", "m-3", "g-1"}  # raw ids stay in bronze: the quarantine has pseudonyms
    words = set(re.findall(r"[\w-]+", " ".join(q.detail.fillna("") + " " + q.record)))
    assert not raw_ids & words, raw_ids & words


def test_users_are_pseudonymised_and_joined_across_domains(runs):
    inter = read_table(str(runs["lake"]), "silver.interactions")
    u1 = hmac.new(TEST_KEY.encode(), b"u1", hashlib.sha256).hexdigest()
    assert not ({"u1", "u2", "m-1", "m-2", "m-3"} & set(inter.user_id))
    assert set(inter[inter.user_id == u1].domain) == {"books", "movies"}  # m-1 -> u1 through the identity map
    assert inter.user_id.str.fullmatch(r"[0-9a-f]{64}").all()


def test_clean_with_another_key_refuses_to_mix_pseudonyms(runs, tmp_path, capsys):
    from crossrec.data.pseudonym import FINGERPRINT_PROPERTY, fingerprint

    path = str(runs["lake"] / "silver" / "interactions")
    assert DeltaTable(path).metadata().configuration[FINGERPRINT_PROPERTY] == fingerprint(TEST_KEY.encode())
    before = DeltaTable(path).version()
    other = tmp_path / "other.key"
    other.write_text("another-key-another-key-0123")
    assert clean_job.main([*job_args(runs["raw"], runs["lake"], other), "--max-quarantine-share", "1"]) == 2
    err = capsys.readouterr().err
    assert "holds pseudonyms made with another key" in err and "another-key" not in err
    assert DeltaTable(path).version() == before, "nothing was written"


def test_items_truncated_and_bad_bytes_kept(runs):
    items = read_table(str(runs["lake"]), "silver.items").set_index("item_id")
    assert len(items.loc["b2", "text"]) == 10_000
    assert items.loc["b2", "text"].startswith("Sourdough Secrets. word word")
    assert "\ufffd" in items.loc["b3", "text"]


def test_validation_reports_written(runs):
    reports = runs["lake"] / "_reports"
    for run_id, table in [("ingest-2024-06-30", "bronze.interactions"), ("clean-2024-06-30", "silver.interactions")]:
        rep = json.loads((reports / run_id / f"{table}.json").read_text())
        assert rep["success"] is True
        kinds = {r["expectation"] for r in rep["results"]}
        assert "expect_column_values_to_not_be_null" in kinds
    rep = json.loads((reports / "clean-2024-06-30" / "silver.interactions.json").read_text())
    kinds = {r["expectation"] for r in rep["results"]}
    assert {"expect_compound_columns_to_be_unique", "expect_column_values_to_be_between", "expect_column_values_to_be_in_set",
            "expect_table_row_count_to_be_between"} <= kinds
    # passing checks show what they observed
    observed = {(r["expectation"], str(r["target"])): r["observed"] for r in rep["results"]}
    assert observed[("expect_table_row_count_to_be_between", "table")] == f"observed {rep['rows']}" and rep["rows"] > 0
    assert observed[("expect_column_values_to_not_be_null", "user_id")] == "0 unexpected"
    # and the run's Great Expectations Data Docs: an index and a page per validated table
    docs = reports / "clean-2024-06-30" / "docs"
    assert rep["docs_url"] == (docs / "index.html").as_uri()
    index = (docs / "index.html").read_text()
    for table in ("silver.interactions", "silver.items"):
        pages = list((docs / "validations" / table.replace(".", "/").split("/")[0]).rglob("*.html"))
        assert any(table.split(".")[1] in str(p) for p in pages), (table, pages)
    assert "interactions" in index and "items" in index
    from crossrec.io.runs import Ledger

    first_clean = [r for r in Ledger(str(runs["lake"])).succeeded("clean") if r["run_id"] == "clean-2024-06-30"][0]
    assert first_clean["details"]["data_docs"] == rep["docs_url"], "the run's record links its Data Docs"


@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
def test_records_counted_while_hashing_equal_sparks_count_of_the_lines(spark, tmp_path, monkeypatch, fmt):
    """The input count ingest takes from the checksum pass is the one Spark's line reader gives (blank and
    whitespace-only lines, byte order marks, LF / CRLF / CR endings, no final newline), whatever the chunk borders."""
    from crossrec.data import ingest as ingest_mod
    from crossrec.data.rawformat import FileSet

    bom = "\ufeff"
    body = ["h1,h2" if fmt == "csv" else '{"a": 0}', "x,1", "", "  \t ", bom, f"{bom}y,2", " z ", "\u00e9,3", "w,4"]
    data = "\n".join(body[:4]) + "\r\n" + "\r\n".join(body[4:6]) + "\r" + "\r".join(body[6:]) + "\n\n \n" + "last,5"
    path = tmp_path / f"f.{fmt}"
    path.write_bytes(data.encode("utf-8"))
    fs = FileSet("interactions", "d", str(tmp_path), fmt, {}, files=(str(path),))
    by_spark = ingest_mod.count_raw_records(spark, fs, [str(path)])
    assert by_spark == (6 if fmt == "csv" else 7)  # seven non-blank lines, one a header
    for chunk in (1, 2, 3, 5, 1 << 20):  # borders inside CRLF, the BOM's bytes and a two-byte character
        monkeypatch.setattr(ingest_mod, "_HASH_CHUNK", chunk)
        sha, lines = ingest_mod.digest(str(path), count_lines=True)
        assert sha == ingest_mod.sha256_file(str(path))
        assert ingest_mod.count_raw_records(spark, fs, [str(path)], {str(path): lines}) == by_spark, chunk
    assert ingest_mod.ascii_lines(fs) and not ingest_mod.ascii_lines(FileSet("items", "d", "", fmt, {}, {"encoding": "utf-16"}))
    assert not ingest_mod.ascii_lines(FileSet("items", "d", "", "csv", {}, {"multiline": "true"}))


def test_rows_name_the_file_and_checksum_they_came_from_whatever_the_file_is_called(spark, tmp_path):
    """read_file_set maps the URI Spark reports back to the hashed path: directly for a path Spark spells as foreseen,
    through decoding for one it spells otherwise (here, a name with a space, '#', '%' and a non-ASCII letter)."""
    from crossrec.data.ingest import read_file_set, sha256_file
    from crossrec.data.rawformat import FileSet

    folder = tmp_path / "set"
    folder.mkdir()
    files = [folder / "plain.csv", folder / "a b#c%d \u00e9.csv"]
    for i, f in enumerate(files):
        f.write_text(f"u,i,t\nu{i},i{i},2021-01-01\nu{i},j{i},2021-01-02\n", encoding="utf-8")
    fs = FileSet("interactions", "d", str(folder), "csv", {"user_id": "u", "item_id": "i", "event_ts": "t"},
                 files=tuple(str(f) for f in files))
    df = read_file_set(spark, fs, [(str(f), sha256_file(str(f))) for f in files])
    got = {(r["source_file"], r["source_checksum"], r["count"]) for r in df.groupBy("source_file", "source_checksum").count().collect()}
    assert got == {(str(f), sha256_file(str(f)), 2) for f in files}


# ----------------------------------------------------------------------------- inputs that stop a run
def test_missing_required_column_stops_before_writing(spark, tmp_path, key_file, capsys):
    raw = write_raw(tmp_path / "raw", books_header="reader,book,read_at,action,stars")
    lake = tmp_path / "lake"
    assert ingest_job.main(job_args(raw, lake, key_file)) == 2
    err = capsys.readouterr().err
    assert "interactions.csv" in err and "'isbn'" in err and "item_id" in err
    assert not lake.exists() or not any(p for p in lake.rglob("_delta_log") if "ops" not in p.parts)  # no data table
    from crossrec.io.runs import Ledger

    assert [(r["stage"], r["status"]) for r in Ledger(str(lake)).runs().to_dict("records")] == [("ingest", "failed")]


def test_unknown_domain_folder_stops_the_run(spark, tmp_path, key_file, capsys):
    raw = write_raw(tmp_path / "raw")
    (raw / "games").mkdir()
    (raw / "games" / "plays.csv").write_text("user,game,ts\nu1,g1,2021-01-01\n")
    assert ingest_job.main(job_args(raw, tmp_path / "lake", key_file)) == 2
    assert "'games'" in capsys.readouterr().err


def test_empty_input_is_a_clear_error(spark, tmp_path, key_file, capsys):
    raw = write_raw(tmp_path / "raw", books_rows=[], movies_rows=[], books_items=[], movies_items=[], identity_rows=[])
    assert ingest_job.main(job_args(raw, tmp_path / "lake", key_file)) == 2
    assert "input is empty" in capsys.readouterr().err


def test_clean_without_key_is_a_clear_error(spark, tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("CROSSREC_PSEUDONYM_KEY", raising=False)
    monkeypatch.delenv("CROSSREC_PSEUDONYM_KEY_FILE", raising=False)
    raw = write_raw(tmp_path / "raw")
    args = ["--raw-dir", str(raw), "--lake-root", str(tmp_path / "lake"), "--spark-master", "local[2]"]
    assert clean_job.main(args) == 2
    assert "CROSSREC_PSEUDONYM_KEY" in capsys.readouterr().err


def test_clean_before_ingest_is_a_clear_error(spark, tmp_path, key_file, capsys):
    raw = write_raw(tmp_path / "raw")
    assert clean_job.main(job_args(raw, tmp_path / "lake", key_file)) == 2
    assert "run `crossrec ingest` first" in capsys.readouterr().err


def test_relative_lake_and_raw_paths(spark, tmp_path, key_file, monkeypatch):
    """`make demo` passes --lake-root lakehouse: a relative folder, not a table name."""
    write_raw(tmp_path / "raw")
    monkeypatch.chdir(tmp_path)
    args = ["--raw-dir", "raw", "--lake-root", "lake", "--pseudonym-key-file", str(key_file),
            "--run-date", "2024-06-30", "--spark-master", "local[2]"]
    assert ingest_job.main(args) == 0
    assert (tmp_path / "lake" / "bronze" / "interactions" / "_delta_log").is_dir()


def test_prepare_runs_ingest_clean_features_in_one_session(scored_lake):
    """jobs/prepare.py (the scored lake's data stages): the three stages in order, each with its own accounting
    rows and run id, as if each had run as its own job."""
    lake = scored_lake["lake"]
    assert {"silver.interactions", "gold.item_index", "gold.user_sequences", "gold.item_embeddings"} <= set(counts(lake))
    acc = read_table(str(lake), "ops.accounting")
    data = acc[acc.stage.isin(["ingest", "clean", "features"])]
    assert set(zip(data.stage, data.run_id)) == {(s, f"{s}-2025-01-01") for s in ("ingest", "clean", "features")}
    assert set(acc[acc.stage == "clean"].table_name) >= {"silver.interactions", "silver.items"}
    assert set(acc[acc.stage == "features"].table_name) >= {"gold.user_sequences", "gold.item_embeddings"}


def test_prepare_stops_at_the_first_failing_stage(spark, tmp_path, monkeypatch, capsys):
    """No key: ingest runs (it needs none), clean fails with its exit code, features never starts."""
    from crossrec_jobs import prepare

    monkeypatch.delenv("CROSSREC_PSEUDONYM_KEY", raising=False)
    monkeypatch.delenv("CROSSREC_PSEUDONYM_KEY_FILE", raising=False)
    raw, lake = write_raw(tmp_path / "raw"), tmp_path / "lake"
    args = ["--raw-dir", str(raw), "--lake-root", str(lake), "--run-date", "2024-06-30", "--spark-master", "local[2]"]
    assert prepare.main(args) == 2
    err = capsys.readouterr().err
    assert "prepare: clean" in err and "CROSSREC_PSEUDONYM_KEY" in err and "prepare: features" not in err
    tables = set(counts(lake))
    assert "bronze.interactions" in tables and not any(t.startswith(("silver.", "gold.")) for t in tables)


@pytest.mark.slow
def test_features_job_builds_gold_and_reuses_cached_embeddings(runs):
    """features on the lake the module fixture cleaned; a re-run encodes nothing and changes no count."""
    from crossrec_jobs import features as features_job

    key = runs["raw"].parent / "key"
    args = job_args(runs["raw"], runs["lake"], key, "--cold-start-fraction", "1.0")
    assert features_job.main(args) == 0
    first = counts(runs["lake"])
    assert first["gold.item_index"] == first["gold.item_embeddings"] == first["silver.items"]
    emb = read_table(str(runs["lake"]), "gold.item_embeddings")
    assert len(emb.embedding.iloc[0]) == 384
    assert features_job.main(args) == 0
    assert counts(runs["lake"]) == first
    acc = read_table(str(runs["lake"]), "ops.accounting")
    feat = acc[(acc.stage == "features") & (acc.table_name == "gold.item_embeddings")]
    assert json.loads(feat[feat.details.str.contains("encoded")].iloc[-1].details)["encoded"] == 0
    seq = acc[(acc.stage == "features") & (acc.table_name == "gold.user_sequences")]
    assert (seq.rows_in == seq.rows_out + seq.duplicates + seq.withheld + seq.quarantined).all()
    # u1 (books, and movies through the identity map) is the one multi-domain user: sampled with fraction 1.0
    sequences = read_table(str(runs["lake"]), "gold.user_sequences")
    cold = sequences[(sequences.split == "test") & sequences.cold_start]
    assert hmac.new(TEST_KEY.encode(), b"u1", hashlib.sha256).hexdigest() in set(cold.user_id)


@pytest.mark.slow
def test_evaluate_job_writes_metrics_of_every_baseline(runs):
    """evaluate after features (the previous test): pop, item-KNN and Spark ALS through one protocol."""
    from crossrec_jobs import evaluate as evaluate_job

    if not (runs["lake"] / "gold" / "user_sequences").is_dir():
        pytest.skip("needs the gold tables of test_features_job_builds_gold_and_reuses_cached_embeddings")
    key = runs["raw"].parent / "key"
    args = ["--lake-root", str(runs["lake"]), "--pseudonym-key-file", str(key), "--run-date", "2024-06-30",
            "--spark-master", "local[2]", "--baselines", "pop,itemknn,als", "--out", str(runs["lake"].parent / "eval")]
    assert evaluate_job.main(args) == 0
    assert evaluate_job.main(args) == 0  # a re-run replaces its own rows
    metrics = read_table(str(runs["lake"]), "gold.metrics")
    assert set(metrics.model) == {"pop", "itemknn", "als"}
    assert not metrics.duplicated(["run_id", "model", "domain", "segment", "metric", "k"]).any()
    ndcg = metrics[(metrics.metric == "ndcg") & (metrics.k == 10)]
    assert ((ndcg.value >= 0) & (ndcg.value <= 1)).all()
    assert json.loads(metrics.data_versions.iloc[0]).keys() == {"gold.item_index", "gold.user_sequences"}
    saved = json.loads((runs["lake"].parent / "eval" / "metrics.json").read_text())
    assert len(saved["records"]) == len(metrics)
