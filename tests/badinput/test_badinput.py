"""Every malformed input gets a clear answer (tests/badinput/cases.py), and after every run that finishes, every
raw line is somewhere: counted from the files independently of Spark's parse, the lines equal the bronze rows,
and the bronze rows equal silver + silver.quarantine + the duplicate count, per table and domain."""
from __future__ import annotations

import csv
import io
import json
from collections import Counter
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from cases import CASES, Case, Stop
from crossrec.io.readers import read_table
from support import TEST_KEY, job_args, write_raw

pytestmark = pytest.mark.spark


def raw_records(raw: Path) -> Counter:
    """{(bronze table, domain): records} of every data file dataset.json names, counted without Spark: CSV lines
    (or records when the file set reads records across lines) after the header, non-blank JSON lines, Parquet rows."""
    from crossrec.data.rawformat import load_dataset

    table = {"interactions": "bronze.interactions", "items": "bronze.items", "identity_map": "bronze.identity_map"}
    counts: Counter = Counter()
    for fs in load_dataset(raw).file_sets:
        for f in fs.files:
            data = Path(f).read_bytes()
            if fs.format == "parquet":
                n = pq.read_metadata(f).num_rows
            elif fs.format == "jsonl":
                n = sum(1 for line in data.splitlines() if line.strip())
            elif fs.options.get("multiline") == "true":
                n = max(0, sum(1 for _ in csv.reader(io.StringIO(data.decode("utf-8")))) - 1)
            else:
                n = max(0, sum(1 for line in data.splitlines() if line.strip()) - 1)
            counts[(table[fs.kind], fs.domain or "*")] += n
    return counts


def run(spark, raw: Path, lake: Path, key: Path, capsys) -> tuple[dict[str, int], str]:
    from crossrec_jobs import clean, ingest

    codes, args = {}, job_args(raw, lake, key, "--no-validate")  # the tables' checks are tested in tests/quality
    for stage, job in (("ingest", ingest), ("clean", clean)):
        codes[stage] = job.main(args)
        if codes[stage]:
            break
    return codes, capsys.readouterr().err


def check_accounting(raw: Path, lake: Path) -> None:
    """Lines in the files == bronze rows; bronze rows == silver + quarantine + duplicates (per table and domain)."""
    bronze = {t: read_table(str(lake), t) for t in ("bronze.interactions", "bronze.items", "bronze.identity_map")
              if (lake / t.replace(".", "/")).exists()}
    got: Counter = Counter()
    for t, df in bronze.items():
        for d, n in (Counter(df.domain) if t != "bronze.identity_map" else {"*": len(df)}).items():
            got[(t, d)] += n
    want = raw_records(raw)
    assert +got == +want, f"raw records {dict(want)} vs bronze rows {dict(got)}"

    quarantine = read_table(str(lake), "silver.quarantine")
    acc = read_table(str(lake), "ops.accounting")
    acc = acc[(acc.stage == "clean") & (acc.run_id == acc[acc.stage == "clean"].run_id.max())]
    silver = {"bronze.interactions": read_table(str(lake), "silver.interactions"),
              "bronze.items": read_table(str(lake), "silver.items")}
    for t, df in bronze.items():
        silver_rows = len(silver[t]) if t in silver else int(acc[acc.table_name == "silver.identity_map"].rows_out.sum())
        if t == "bronze.items":
            silver_rows -= int(silver[t].attributes.map(lambda a: dict(a or {}).get("placeholder") == "true").sum())
        dups = int(acc[acc.table_name == t.replace("bronze", "silver")].duplicates.sum())
        assert len(df) == silver_rows + int((quarantine.source_table == t).sum()) + dups, t


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_bad_input(case: Case, spark, tmp_path, capsys, monkeypatch):
    for k, v in case.env.items():
        monkeypatch.setenv(k, v)
    raw, lake, key = write_raw(tmp_path / "raw"), tmp_path / "lake", tmp_path / "key"
    key.write_text(TEST_KEY)
    case.edit(raw)
    codes, err = run(spark, raw, lake, key, capsys)
    if case.second is not None:
        assert codes == {"ingest": 0, "clean": 0}, err[-2000:]
        case.second(raw)
        codes, err = run(spark, raw, lake, key, capsys)
    expect = case.expect
    if isinstance(expect, Stop):
        assert codes.get(expect.stage) == expect.code, (codes, err[-2000:])
        assert all(codes[s] == 0 for s in codes if s != expect.stage)
        for text in expect.says:
            assert text in err, f"{text!r} not in:\n{err[-2000:]}"
        for text in expect.hides:
            assert text not in err, f"{text!r} must not be in the message"
        return
    assert codes == {"ingest": 0, "clean": 0}, err[-3000:]
    check_accounting(raw, lake)
    q = read_table(str(lake), "silver.quarantine")
    assert dict(Counter(zip(q.source_table, q.domain, q.reason))) == expect.quarantined
    acc = read_table(str(lake), "ops.accounting")
    clean_acc = acc[(acc.stage == "clean") & (acc.table_name == "silver.interactions")]
    assert int(clean_acc[clean_acc.run_id == clean_acc.run_id.max()].duplicates.sum()) == expect.duplicates
    inter = read_table(str(lake), "silver.interactions")
    for (table, domain), n in expect.silver.items():
        df = read_table(str(lake), table)
        assert int((df.domain == domain).sum()) == n, (table, domain)
    for domain, n in expect.users.items():
        assert inter[inter.domain == domain].user_id.nunique() == n, domain
    assert not any(json.loads(r).get("corrupt_record") for r in q.record), "raw lines stay in bronze"


def test_the_suite_has_a_case_for_each_documented_kind_of_bad_input():
    assert len(CASES) >= 40 and len({c.name for c in CASES}) == len(CASES)


def test_csv_on_a_remote_store_binds_columns_by_header_not_position(spark, tmp_path, capsys, monkeypatch):
    """A file whose columns come in another order (item before user) is read by name when the file set lives on an
    object store (no local header read): users and items are not swapped."""
    import crossrec.data.ingest as ingest_lib

    raw, lake, key = write_raw(tmp_path / "raw"), tmp_path / "lake", tmp_path / "key"
    key.write_text(TEST_KEY)
    p = raw / "books" / "interactions.csv"
    rows = [line.split(",") for line in p.read_text(encoding="utf-8").splitlines()]
    p.write_text("\n".join(",".join([r[1], r[0], *r[2:]]) for r in rows) + "\n", encoding="utf-8")  # isbn,reader,...
    monkeypatch.setattr(ingest_lib, "_is_local", lambda path: "/books/" not in str(path))  # books "remote"
    codes, err = run(spark, raw, lake, key, capsys)
    assert codes == {"ingest": 0, "clean": 0}, err[-2000:]
    books = read_table(str(lake), "silver.interactions")
    books = books[books.domain == "books"]
    assert set(books.item_id) == {"b1", "b2"} and len(books) == 3
