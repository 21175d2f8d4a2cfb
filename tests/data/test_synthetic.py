"""Tests of crossrec.data.synthetic: determinism, format, bookkeeping and the planted signal, on real files."""

from __future__ import annotations

import csv
import json
import math
import tempfile
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from crossrec.data.synthetic import (
    BAD_REASONS,
    DOMAIN_NAMES,
    TIME_MAX_S,
    TIME_MIN_S,
    SyntheticSpec,
    domain_name,
    generate,
)

# 4 domains: books (csv, iso8601), movies (jsonl, epoch_s), music (parquet, epoch_ms, identity map),
# games (csv, Spark pattern). Several chunks, so several part files per domain.
SPEC = SyntheticSpec(users=1500, domains=4, items_per_domain=120, topics=8, seed=11)
CHUNK = 400
DIRTY_RATE = 0.06
SPARK_PATTERNS = {"yyyy-MM-dd HH:mm:ss": "%Y-%m-%d %H:%M:%S"}


# ----------------------------------------------------------------------------------------------------
# Reading the raw format back, only through dataset.json.


def files_of(raw: Path, entry: dict) -> list[Path]:
    path = raw / entry["path"]
    return sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]


def read_file(path: Path, fmt: str) -> pd.DataFrame:
    if fmt == "csv":
        return pd.read_csv(path, dtype=str, keep_default_na=False)
    if fmt == "jsonl":
        return pd.read_json(path, lines=True, dtype=False) if path.stat().st_size else pd.DataFrame()
    return pq.read_table(path).to_pandas()


def read_entry(raw: Path, entry: dict) -> pd.DataFrame:
    """All rows of one file set, raw column names."""
    frames = [read_file(p, entry["format"]) for p in files_of(raw, entry)]
    return pd.concat([f for f in frames if len(f.columns)], ignore_index=True)


def parse_ts(values: pd.Series, timestamp: str) -> pd.Series:
    if timestamp == "epoch_s":
        return pd.to_datetime(values.astype(np.int64), unit="s", utc=True)
    if timestamp == "epoch_ms":
        return pd.to_datetime(values.astype(np.int64), unit="ms", utc=True)
    fmt = "%Y-%m-%dT%H:%M:%SZ" if timestamp == "iso8601" else SPARK_PATTERNS[timestamp]
    return pd.to_datetime(values, format=fmt, utc=True)


def canonical_events(raw: Path) -> pd.DataFrame:
    """Clean interactions of every domain: domain, person, item_id, event_ts, event_type, weight."""
    ds = json.loads((raw / "dataset.json").read_text())
    id_map = {}
    if "identity_map" in ds:
        cols = ds["identity_map"]["columns"]
        m = pd.read_csv(raw / ds["identity_map"]["path"], dtype=str)
        id_map = {(d, u): g for d, u, g in zip(m[cols["domain"]], m[cols["user_id"]], m[cols["global_user_id"]])}
    frames = []
    for domain, entry in ds["domains"].items():
        inter = entry["interactions"]
        raw_df = read_entry(raw, inter)
        df = raw_df.rename(columns={v: k for k, v in inter["columns"].items()})
        assert set(df.columns) == set(inter["columns"]), (domain, list(raw_df.columns))
        df["event_ts"] = parse_ts(df["event_ts"], inter["timestamp"])
        df["weight"] = df["weight"].astype(float) if "weight" in df else 1.0
        df["person"] = [id_map.get((domain, u), u) for u in df["user_id"]]
        df["domain"] = domain
        frames.append(df[["domain", "person", "user_id", "item_id", "event_ts", "event_type", "weight"]])
    return pd.concat(frames, ignore_index=True)


def catalog(raw: Path, domain: str) -> pd.DataFrame:
    entry = json.loads((raw / "dataset.json").read_text())["domains"][domain]["items"]
    return read_entry(raw, entry).rename(columns={v: k for k, v in entry["columns"].items()})


def all_files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def clean_raw(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("clean") / "raw"
    generate(out, SPEC, chunk_users=CHUNK)
    return out


@pytest.fixture(scope="module")
def dirty_raw(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("dirty") / "raw"
    generate(out, SyntheticSpec(**{**SPEC.__dict__, "dirty_rate": DIRTY_RATE}), chunk_users=CHUNK)
    return out


@pytest.fixture(scope="module")
def events(clean_raw: Path) -> pd.DataFrame:
    return canonical_events(clean_raw)


# ----------------------------------------------------------------------------------------------------
# Determinism.


def test_same_seed_gives_identical_bytes(tmp_path: Path, dirty_raw: Path) -> None:
    again = tmp_path / "again"
    generate(again, SyntheticSpec(**{**SPEC.__dict__, "dirty_rate": DIRTY_RATE}), chunk_users=CHUNK)
    first, second = all_files(dirty_raw), all_files(again)
    assert list(first) == list(second)
    for name in first:
        assert first[name] == second[name], name


def test_other_seed_gives_other_data(tmp_path: Path, clean_raw: Path) -> None:
    other = tmp_path / "other"
    generate(other, SyntheticSpec(**{**SPEC.__dict__, "seed": SPEC.seed + 1}), chunk_users=CHUNK)
    first, second = all_files(clean_raw), all_files(other)
    assert list(first) == list(second)  # same layout ...
    changed = [n for n in first if first[n] != second[n] and n != "dataset.json"]
    data_files = [n for n in first if n not in ("dataset.json", "manifest.json")]
    assert set(data_files) <= set(changed)  # ... every data file differs
    assert first["dataset.json"] == second["dataset.json"]


def test_overwrite_replaces_and_non_empty_dir_is_refused(tmp_path: Path, clean_raw: Path) -> None:
    out = tmp_path / "raw"
    generate(out, SyntheticSpec(**{**SPEC.__dict__, "users": 2 * CHUNK + 1}), chunk_users=CHUNK)
    with pytest.raises(FileExistsError, match="not empty"):
        generate(out, SPEC, chunk_users=CHUNK)
    generate(out, SPEC, chunk_users=CHUNK, overwrite=True)
    assert all_files(out) == all_files(clean_raw)


def test_invalid_spec_is_rejected() -> None:
    with pytest.raises(ValueError, match="items_per_domain"):
        SyntheticSpec(items_per_domain=5, topics=12)
    with pytest.raises(ValueError, match="dirty_rate"):
        SyntheticSpec(dirty_rate=1.5)
    with pytest.raises(ValueError, match="users"):
        SyntheticSpec(users=0)


# ----------------------------------------------------------------------------------------------------
# Layout, formats and counts.


def test_dataset_json_names_formats_and_timestamps(clean_raw: Path) -> None:
    ds = json.loads((clean_raw / "dataset.json").read_text())
    assert list(ds["domains"]) == ["books", "movies", "music", "games"]
    got = {d: (e["interactions"]["format"], e["interactions"]["timestamp"]) for d, e in ds["domains"].items()}
    assert got == {"books": ("csv", "iso8601"), "movies": ("jsonl", "epoch_s"), "music": ("parquet", "epoch_ms"),
                   "games": ("csv", "yyyy-MM-dd HH:mm:ss")}
    assert ds["domains"]["books"]["interactions"]["columns"] == {
        "user_id": "reader", "item_id": "isbn", "event_ts": "read_at", "event_type": "action", "weight": "stars"}
    assert ds["domains"]["music"]["interactions"]["columns"] == {
        "user_id": "listener", "item_id": "track", "event_ts": "played_at_ms", "event_type": "kind"}
    assert ds["identity_map"] == {"path": "identity_map.csv", "format": "csv", "columns": {
        "domain": "domain", "user_id": "local_user", "global_user_id": "person"}}
    assert [domain_name(i) for i in range(10)] == list(DOMAIN_NAMES) + ["domain8", "domain9"]


def test_files_on_disk_match_manifest(clean_raw: Path) -> None:
    manifest = json.loads((clean_raw / "manifest.json").read_text())
    ds = json.loads((clean_raw / "dataset.json").read_text())
    assert manifest["spec"] == SPEC.__dict__
    total = 0
    for domain, entry in ds["domains"].items():
        m = manifest["domains"][domain]["interactions"]
        on_disk = [p.relative_to(clean_raw).as_posix() for p in files_of(clean_raw, entry["interactions"])]
        assert on_disk == [f["path"] for f in m["files"]]
        assert len(on_disk) == math.ceil(SPEC.users / CHUNK)
        for f in m["files"]:
            assert len(read_file(clean_raw / f["path"], entry["interactions"]["format"])) == f["rows"]
            assert f["rows"] == f["clean_rows"]
        assert m["rows"] == sum(f["rows"] for f in m["files"])
        assert len(catalog(clean_raw, domain)) == manifest["domains"][domain]["items"]["rows"] == SPEC.items_per_domain
        total += m["rows"]
    assert manifest["totals"]["rows"] == manifest["totals"]["clean_rows"] == total
    assert set(manifest["totals"]["bad_rows"].values()) == {0}


def test_columns_catalogs_and_values(clean_raw: Path, events: pd.DataFrame) -> None:
    ds = json.loads((clean_raw / "dataset.json").read_text())
    for domain, entry in ds["domains"].items():
        items = read_entry(clean_raw, entry["items"])
        wanted = set(entry["items"]["columns"].values()) | set(entry["items"]["text_columns"]) | set(
            entry["items"]["attribute_columns"])
        assert set(items.columns) == wanted, domain
        ids = items[entry["items"]["columns"]["item_id"]]
        assert ids.is_unique and (ids.str.len() > 0).all()
        assert items[entry["items"]["columns"]["title"]].str.len().gt(0).all()
        assert set(events.loc[events.domain == domain, "item_id"]) <= set(ids), domain
    assert (events.user_id.str.len() > 0).all()
    assert set(events.event_type) <= {"view", "rating", "purchase"}
    assert np.isfinite(events.weight).all() and (events.weight >= 0).all()
    ratings = events[events.event_type == "rating"]
    assert ratings.weight.between(0.5, 5).all() and len(ratings) > 0
    assert (events.loc[events.event_type == "view", "weight"] == 1).all()
    books = events[events.domain == "books"]
    assert set(books.weight) <= {1, 2, 3, 4, 5}
    isbns = catalog(clean_raw, "books").item_id
    assert isbns.str.fullmatch(r"978\d{10}").all()
    digits = isbns.map(lambda s: sum(int(c) * (3 if i % 2 else 1) for i, c in enumerate(s)) % 10)
    assert (digits == 0).all()  # valid ISBN-13 check digits


def test_timestamps_in_range_and_strictly_increasing_per_person(events: pd.DataFrame) -> None:
    lo = pd.Timestamp(TIME_MIN_S, unit="s", tz="UTC")
    hi = pd.Timestamp(TIME_MAX_S + 1, unit="s", tz="UTC")
    assert lo == pd.Timestamp("2019-01-01T00:00:00Z") and hi == pd.Timestamp("2025-01-01T00:00:00Z")
    assert (events.event_ts >= lo).all() and (events.event_ts < hi).all()
    seconds = events.event_ts.dt.floor("s")
    assert not pd.DataFrame({"p": events.person, "s": seconds}).duplicated().any()  # across all domains
    music_ms = events.loc[events.domain == "music", "event_ts"]
    assert (music_ms.dt.microsecond > 0).any()  # epoch_ms carries milliseconds


def test_identity_map_covers_every_music_user(clean_raw: Path, events: pd.DataFrame) -> None:
    id_map = pd.read_csv(clean_raw / "identity_map.csv", dtype=str)
    assert list(id_map.columns) == ["domain", "local_user", "person"]
    assert set(id_map.domain) == {"music"}
    assert id_map.local_user.is_unique and id_map.person.is_unique
    assert id_map.local_user.str.fullmatch(r"m-[0-9a-f]{8}").all()
    assert id_map.person.str.fullmatch(r"u\d{7}").all()
    music = events[events.domain == "music"]
    assert set(music.user_id) == set(id_map.local_user)  # every music user mapped, no extra rows
    manifest = json.loads((clean_raw / "manifest.json").read_text())
    assert manifest["identity_map"]["rows"] == len(id_map) == manifest["domains"]["music"]["users"]
    others = events[events.domain != "music"]
    assert others.user_id.str.fullmatch(r"u\d{7}").all()
    # music persons are real users: most of them are active elsewhere too, under the same global id
    assert len(set(music.person) & set(others.person)) > 0.5 * music.person.nunique()


def test_users_domains_and_event_counts(clean_raw: Path, events: pd.DataFrame) -> None:
    manifest = json.loads((clean_raw / "manifest.json").read_text())
    per_person = events.groupby("person").agg(domains=("domain", "nunique"), n=("item_id", "size"))
    assert len(per_person) == SPEC.users
    assert (per_person.n >= 3).all()
    single = int((per_person.domains == 1).sum())
    assert single == manifest["users"]["single_domain"]
    assert abs(single / SPEC.users - SPEC.single_domain_share) < 0.05
    assert (per_person.domains >= 2).sum() > 0.5 * SPEC.users
    assert abs(per_person.n.mean() - SPEC.mean_events_per_user) < 1.0
    for domain, m in manifest["domains"].items():
        assert events.loc[events.domain == domain, "person"].nunique() == m["users"]


# ----------------------------------------------------------------------------------------------------
# The planted signal.


def domain_topics(raw: Path) -> dict[tuple[str, str], int]:
    """(domain, item_id) -> planted topic, through the manifest's category of each topic in each domain."""
    manifest = json.loads((raw / "manifest.json").read_text())
    topic = {}
    for domain in ("books", "movies", "music"):
        by_category = {t["categories"][domain]: t["id"] for t in manifest["topics"]}
        items = catalog(raw, domain)
        assert items.category.nunique() == len(manifest["topics"])
        topic.update({(domain, i): by_category[c] for i, c in zip(items.item_id, items.category)})
    return topic


def test_per_domain_text_names_each_domains_topics_differently(tmp_path: Path, clean_raw: Path) -> None:
    """text_signal=per_domain: the same users and items, each domain's topics named by its own themes."""
    out = tmp_path / "raw"
    generate(out, SyntheticSpec(**{**SPEC.__dict__, "text_signal": "per_domain"}), chunk_users=CHUNK)
    aligned, shuffled = domain_topics(clean_raw), domain_topics(out)
    assert aligned == shuffled  # the planted topics of the items do not change, only their names

    def shared_title_words(raw: Path, topics: dict) -> float:
        """Mean over topics of the share of the books' topic words in titles that its movies' titles use too."""
        words = {}
        for d in ("books", "movies"):
            items = catalog(raw, d)
            for item_id, title in zip(items.item_id, items.title):
                words.setdefault((d, topics[(d, item_id)]), set()).update(w.strip(":.,") for w in title.split())
        t_ids = {t for _, t in words}
        for d in ("books", "movies"):  # template words ("The", "of", "Vol.") name no topic
            common = {w for w in set().union(*(words[(d, t)] for t in t_ids))
                      if sum(w in words[(d, t)] for t in t_ids) > 2}
            for t in t_ids:
                words[(d, t)] -= common
        return float(np.mean([len(words[("books", t)] & words[("movies", t)]) / len(words[("books", t)]) for t in t_ids]))

    same, other = shared_title_words(clean_raw, aligned), shared_title_words(out, shuffled)
    assert same > 0.5 and other < same / 2, (same, other)
    for name in ("books/interactions", "movies/interactions"):  # the events are byte for byte the aligned ones
        assert all_files(out / name) == all_files(clean_raw / name)
    with pytest.raises(ValueError, match="text_signal"):
        SyntheticSpec(text_signal="shuffled")


def test_topic_in_one_domain_predicts_topic_in_another(clean_raw: Path, events: pd.DataFrame) -> None:
    manifest = json.loads((clean_raw / "manifest.json").read_text())
    topic = {}
    for domain in ("books", "movies", "music"):
        by_category = {t["categories"][domain]: t["id"] for t in manifest["topics"]}
        items = catalog(clean_raw, domain)
        assert items.category.nunique() == SPEC.topics
        topic.update({(domain, i): by_category[c] for i, c in zip(items.item_id, items.category)})
    ev = events[events.domain.isin(["books", "movies", "music"])].copy()
    ev["topic"] = [topic[(d, i)] for d, i in zip(ev.domain, ev.item_id)]
    main_topic = ev.groupby(["person", "domain"]).topic.agg(lambda s: s.value_counts().idxmax()).unstack()
    n_events = ev.groupby(["person", "domain"]).size().unstack()
    rng = np.random.default_rng(0)
    for a, b in (("books", "movies"), ("books", "music"), ("movies", "music")):
        both = (n_events[a] >= 3) & (n_events[b] >= 3)
        ta, tb = main_topic.loc[both, a].to_numpy(), main_topic.loc[both, b].to_numpy()
        assert both.sum() > 100, (a, b)
        hit = float((ta == tb).mean())
        chance = float(np.mean([(ta == rng.permutation(tb)).mean() for _ in range(20)]))
        assert chance < 0.3 and hit > 0.5 and hit > 3 * chance, (a, b, hit, chance)


def test_item_popularity_is_skewed_within_topic(events: pd.DataFrame) -> None:
    counts = events[events.domain == "books"].item_id.value_counts()
    top_decile = counts.iloc[: max(1, len(counts) // 10)].sum()
    assert top_decile > 0.25 * counts.sum()


# ----------------------------------------------------------------------------------------------------
# Bad rows: the dirty data set is its clean twin plus exactly the counted bad rows.


def raw_records(path: Path, fmt: str) -> list[tuple]:
    """Every data row of a file as a tuple of raw values (csv: the split line, so field counts show)."""
    if fmt == "csv":
        with open(path, newline="", encoding="utf-8") as f:
            return [tuple(r) for r in list(csv.reader(f))[1:]]
    if fmt == "jsonl":
        with open(path, encoding="utf-8") as f:
            return [tuple(json.loads(line).items()) for line in f]
    table = pq.read_table(path)
    return [tuple(zip(table.column_names, row)) for row in zip(*(c.to_pylist() for c in table.columns))]


def classify(record: tuple, fmt: str, inter: dict, items: set[str], clean: Counter) -> set[str]:
    """Defects of one raw row; a row without defect that is a clean row is a duplicate."""
    cols = inter["columns"]
    if fmt == "csv":
        header = [cols[c] for c in ("user_id", "item_id", "event_ts", "event_type", "weight") if c in cols]
        if len(record) != len(header):
            return {"malformed_line"}
        values = dict(zip(header, record))
    else:
        values = dict(record)
    defects = set()
    if values[cols["user_id"]] in ("", None):
        defects.add("missing_user_id")
    ts = values[cols["event_ts"]]
    if ts is None or ts == "not-a-date":
        defects.add("unparseable_timestamp")
    else:
        t = parse_ts(pd.Series([ts]), inter["timestamp"]).iloc[0]
        assert t.year in (1990, 2099) or 2019 <= t.year <= 2024, t
        if not 2019 <= t.year <= 2024:
            defects.add("timestamp_out_of_range")
    if values[cols["item_id"]] not in items:
        defects.add("item_not_in_catalog")
    if not defects and clean[record]:
        defects.add("duplicate")
    return defects


def test_dirty_rows_are_counted_exactly_per_reason(clean_raw: Path, dirty_raw: Path) -> None:
    ds = json.loads((dirty_raw / "dataset.json").read_text())
    manifest = json.loads((dirty_raw / "manifest.json").read_text())
    clean_manifest = json.loads((clean_raw / "manifest.json").read_text())
    totals = Counter()
    for domain, entry in ds["domains"].items():
        inter, fmt = entry["interactions"], entry["interactions"]["format"]
        items = set(catalog(dirty_raw, domain).item_id)
        files = manifest["domains"][domain]["interactions"]["files"]
        for f, cf in zip(files, clean_manifest["domains"][domain]["interactions"]["files"]):
            dirty = Counter(raw_records(dirty_raw / f["path"], fmt))
            clean = Counter(raw_records(clean_raw / f["path"], fmt))
            assert max(clean.values()) == 1  # no two clean rows are equal
            assert not clean - dirty  # every clean row is still there
            extra = dirty - clean
            assert sum(dirty.values()) == f["rows"] and sum(clean.values()) == f["clean_rows"] == cf["rows"]
            found = Counter()
            for record, k in extra.items():
                assert k == 1, record  # bad rows differ from each other ...
                defects = classify(record, fmt, inter, items, clean)
                assert len(defects) == 1, (record, defects)  # ... and have exactly one defect each
                found.update(defects)
            reasons = BAD_REASONS if fmt == "csv" else BAD_REASONS[:-1]
            assert f["bad_rows"] == {r: found[r] for r in reasons}, (f["path"], found)
            per_reason = math.ceil(DIRTY_RATE * f["clean_rows"] / len(reasons))
            assert set(f["bad_rows"].values()) == {per_reason}, f
            assert f["rows"] == f["clean_rows"] + len(reasons) * per_reason
            totals.update(found)
    assert manifest["totals"]["bad_rows"] == {r: totals[r] for r in BAD_REASONS}
    assert manifest["totals"]["rows"] == manifest["totals"]["clean_rows"] + sum(totals.values())


def test_dirty_rows_are_spread_through_the_file(dirty_raw: Path) -> None:
    lines = (dirty_raw / "books/interactions/part-00000.csv").read_text().splitlines()[1:]
    bad = [i for i, line in enumerate(lines) if line.startswith(",") or "not-a-date" in line]
    assert bad and bad[0] < len(lines) / 3 and bad[-1] > 2 * len(lines) / 3


def test_malformed_lines_have_three_or_six_fields(dirty_raw: Path) -> None:
    with open(dirty_raw / "books/interactions/part-00000.csv", newline="") as f:
        widths = Counter(len(r) for r in csv.reader(f))
    assert set(widths) == {3, 5, 6} and widths[3] >= 1 and widths[6] >= 1


# ----------------------------------------------------------------------------------------------------
# Properties over many small specs.


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    users=st.integers(1, 60),
    domains=st.integers(1, 10),
    topics=st.integers(1, 15),
    mean_events=st.floats(0.5, 30),
    single=st.floats(0, 1),
    dirty=st.sampled_from([0.0, 0.1, 1.0]),
    chunk=st.integers(1, 70),
    seed=st.integers(0, 2**31),
)
def test_any_small_spec_is_consistent(users: int, domains: int, topics: int, mean_events: float, single: float,
                                      dirty: float, chunk: int, seed: int) -> None:
    spec = SyntheticSpec(users=users, domains=domains, items_per_domain=max(topics, 20), topics=topics,
                         mean_events_per_user=mean_events, single_domain_share=single, dirty_rate=dirty, seed=seed)
    with tempfile.TemporaryDirectory() as tmp:
        raw = Path(tmp) / "raw"
        manifest = generate(raw, spec, chunk_users=chunk)
        assert json.loads((raw / "manifest.json").read_text()) == manifest
        ds = json.loads((raw / "dataset.json").read_text())
        assert list(ds["domains"]) == [domain_name(i) for i in range(domains)]
        assert ("identity_map" in ds) == (domains >= 3)
        n_files = math.ceil(users / chunk)
        clean_total = 0
        for domain, entry in ds["domains"].items():
            m = manifest["domains"][domain]["interactions"]
            assert len(files_of(raw, entry["interactions"])) == len(m["files"]) == n_files
            for f in m["files"]:
                assert len(raw_records(raw / f["path"], entry["interactions"]["format"])) == f["rows"]
                assert f["rows"] == f["clean_rows"] + sum(f["bad_rows"].values())
                if dirty == 0 or f["clean_rows"] == 0:
                    assert set(f["bad_rows"].values()) <= {0}
                else:
                    assert min(f["bad_rows"].values()) >= 1
            clean_total += m["clean_rows"]
        assert manifest["totals"]["clean_rows"] == clean_total >= 3 * users
        if domains == 1:
            assert manifest["users"]["single_domain"] == users


def test_shared_entities_name_the_same_creators_in_every_domain_and_users_keep_to_theirs(tmp_path: Path) -> None:
    """entity_signal=shared: books' authors and movies' directors are the same people per topic, declared as person
    entities; a person's events in a topic concentrate on one creator, the same one in both domains."""
    out = tmp_path / "raw"
    generate(out, SyntheticSpec(**{**SPEC.__dict__, "entity_signal": "shared"}), chunk_users=CHUNK)
    items = json.loads((out / "dataset.json").read_text())["domains"]
    assert items["books"]["items"]["entities"]["author"] == {"type": "person", "separator": ";"}
    assert items["movies"]["items"]["entities"] == {"director": {"type": "person"}, "year": False}
    creator = {}
    for domain, col in (("books", "author"), ("movies", "director")):
        cat = catalog(out, domain)
        creator.update({(domain, i): a.split(";")[0].strip() for i, a in zip(cat.item_id, cat[col])})
    books, movies = ({v for (d, _), v in creator.items() if d == dom} for dom in ("books", "movies"))
    assert len(books & movies) >= 0.9 * len(books | movies), (books, movies)  # a creator may have no item in a domain
    ev = canonical_events(out)
    ev = ev[ev.domain.isin(["books", "movies"])].copy()
    ev["creator"] = [creator[(d, i)] for d, i in zip(ev.domain, ev.item_id)]
    top = ev.groupby(["person", "domain"]).creator.agg(lambda c: c.value_counts().index[0])
    both = top.unstack().dropna()
    assert len(both) > 100
    # 4 creators a topic, 1-3 topics a person: by chance the top creators of two domains would agree far less often
    assert (both.books == both.movies).mean() > 0.5, (both.books == both.movies).mean()
    with pytest.raises(ValueError, match="entity_signal"):
        SyntheticSpec(entity_signal="everywhere")


def test_vector_signal_codes_each_creator_alike_in_every_domain(tmp_path: Path) -> None:
    """vector_signal=creator: every item has an 8-float style_vec, declared as modality image; items of one (topic,
    creator) are near each other in every domain, whatever their format (a CSV cell holds the JSON text)."""
    out = tmp_path / "raw"
    generate(out, SyntheticSpec(**{**SPEC.__dict__, "vector_signal": "creator"}), chunk_users=CHUNK)
    ds = json.loads((out / "dataset.json").read_text())["domains"]
    assert all(d["items"]["vectors"] == {"style_vec": {"dim": 8, "modality": "image"}} for d in ds.values())
    vec = {}
    for domain in ("books", "movies", "music"):
        cat = catalog(out, domain)
        vec[domain] = np.stack([np.asarray(json.loads(v) if isinstance(v, str) else v, dtype=float) for v in cat.style_vec])
        assert vec[domain].shape == (len(cat), 8)
    b, m = vec["books"], vec["movies"]
    sims = (b / np.linalg.norm(b, axis=1, keepdims=True)) @ (m / np.linalg.norm(m, axis=1, keepdims=True)).T
    nearest = np.sort(sims, axis=1)[:, -1]  # each book's closest movie shares its code: cosine near 1
    assert np.median(nearest) > 0.9, np.median(nearest)
    with pytest.raises(ValueError, match="vector_signal"):
        SyntheticSpec(vector_signal="sound")


def test_new_items_are_picked_only_by_a_persons_latest_two_events_of_their_domain(tmp_path: Path, events: pd.DataFrame) -> None:
    """new_items: a share of each catalog is new; such an item is only ever one of a person's latest two events of its
    domain (the validation and test targets: no training event), an earlier pick goes to an old item; nothing else of
    the data changes."""
    from crossrec.data.synthetic import _platform

    spec = SyntheticSpec(**{**SPEC.__dict__, "new_items": 0.2})
    out = tmp_path / "raw"
    generate(out, spec, chunk_users=CHUNK)
    ev = canonical_events(out)
    catalogs = _platform(spec).catalogs
    names = json.loads((out / "dataset.json").read_text())["domains"]
    new = {(d, catalogs[k].ids[i]) for k, d in enumerate(names) for i in np.flatnonzero(catalogs[k].new)}
    assert 0.15 < len(new) / sum(len(c.ids) for c in catalogs) < 0.25
    latest = ev.groupby(["person", "domain"]).event_ts.rank(method="first", ascending=False) <= 2
    is_new = pd.Series([(d, i) in new for d, i in zip(ev.domain, ev.item_id)], index=ev.index)
    assert is_new.sum() > 50 and not (is_new & ~latest).any(), "a new item only as one of the latest two events"
    assert 0.1 < is_new[latest].mean() < 0.3, "the latest events pick new items about as often as they exist"
    same = events.drop(columns="item_id").reset_index(drop=True)
    assert ev.drop(columns="item_id").reset_index(drop=True).equals(same), "who, when and what kind stay the same"
    twins = catalogs[0].twin[catalogs[0].new]
    assert not catalogs[0].new[twins].any() and (catalogs[0].topic_of[twins] == catalogs[0].topic_of[catalogs[0].new]).all()
    with pytest.raises(ValueError, match="new_items"):
        SyntheticSpec(new_items=1.0)
