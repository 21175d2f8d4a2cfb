"""Tests of crossrec.data.rawformat.load_dataset: the documented raw format and its errors (no Spark)."""
from __future__ import annotations

import json
import os
import re
import tempfile
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from support import write_raw
from crossrec.data.rawformat import DOMAIN_RE, FileSet, RawFormatError, load_dataset


def _spec(raw: Path) -> dict:
    return json.loads((raw / "dataset.json").read_text(encoding="utf-8"))


def _save(raw: Path, spec) -> Path:
    (raw / "dataset.json").write_text(json.dumps(spec), encoding="utf-8")
    return raw / "dataset.json"


def _error(raw: Path) -> str:
    with pytest.raises(RawFormatError) as e:
        load_dataset(raw)
    return str(e.value)


# ------------------------------------------------------------------------------------------ the valid set
def test_tiny_set_parses(tiny_raw):
    ds = load_dataset(tiny_raw)
    r = str(tiny_raw)
    assert (ds.name, ds.root, ds.domains, ds.extras) == ("tiny", r, ("books", "movies"), {})
    assert [(fs.kind, fs.domain, fs.format, fs.timestamp) for fs in ds.file_sets] == [
        ("interactions", "books", "csv", "iso8601"),
        ("items", "books", "csv", "iso8601"),
        ("interactions", "movies", "jsonl", "epoch_s"),
        ("items", "movies", "jsonl", "iso8601"),
        ("identity_map", None, "csv", "iso8601"),
    ]
    assert [fs.files for fs in ds.file_sets] == [
        (f"{r}/books/interactions.csv",),
        (f"{r}/books/items.csv",),
        (f"{r}/movies/interactions.jsonl",),
        (f"{r}/movies/items.jsonl",),
        (f"{r}/identity_map.csv",),
    ]
    assert [fs.path for fs in ds.file_sets] == [fs.files[0] for fs in ds.file_sets]


def test_tiny_set_columns(tiny_raw):
    ds = load_dataset(tiny_raw)
    bi = ds.file_set("interactions", "books")
    assert bi.columns == {"user_id": "reader", "item_id": "isbn", "event_ts": "read_at", "event_type": "action", "weight": "stars"}
    assert bi.raw_columns == ["reader", "isbn", "read_at", "action", "stars"]
    assert (bi.text_columns, bi.attribute_columns, bi.options, bi.default_event_type) == ((), (), {}, "interaction")
    books = ds.file_set("items", "books")
    assert books.text_columns == ("title", "blurb")
    assert books.attribute_columns == ("author",)
    assert books.raw_columns == ["isbn", "title", "genre", "blurb", "author"]  # "title" once
    movies = ds.file_set("items", "movies")
    assert (movies.text_columns, movies.attribute_columns) == (("name", "plot"), ())
    assert movies.raw_columns == ["movie_id", "name", "genre", "plot"]
    assert ds.file_set("interactions", "music") is None


def test_tiny_set_identity_map(tiny_raw):
    idm = load_dataset(tiny_raw).file_set("identity_map")
    assert (idm.kind, idm.domain, idm.label) == ("identity_map", None, "identity_map")
    assert idm.columns == {"domain": "domain", "user_id": "local_user", "global_user_id": "person"}
    assert load_dataset(tiny_raw).file_set("items", "books").label == "books/items"


def test_identity_map_is_optional(tiny_raw):
    spec = _spec(tiny_raw)
    del spec["identity_map"]
    _save(tiny_raw, spec)
    ds = load_dataset(tiny_raw)
    assert ds.file_set("identity_map") is None
    assert len(ds.file_sets) == 4


def test_name_defaults_to_folder_and_extras_are_kept(tiny_raw):
    spec = _spec(tiny_raw)
    del spec["name"]
    spec["extras"] = {"source": "unit test"}
    _save(tiny_raw, spec)
    ds = load_dataset(tiny_raw)
    assert (ds.name, ds.extras) == ("raw", {"source": "unit test"})


def test_items_text_defaults_to_the_title_column(tiny_raw):
    spec = _spec(tiny_raw)
    del spec["domains"]["movies"]["items"]["text_columns"]
    spec["domains"]["books"]["interactions"]["options"] = {"delimiter": ",", "quote": '"'}
    spec["domains"]["books"]["interactions"]["default_event_type"] = "read"
    _save(tiny_raw, spec)
    ds = load_dataset(tiny_raw)
    assert ds.file_set("items", "movies").text_columns == ("name",)
    assert ds.file_set("interactions", "books").options == {"delimiter": ",", "quote": '"'}
    assert ds.file_set("interactions", "books").default_event_type == "read"


def test_folder_file_set_lists_data_files_and_skips_hidden_ones(tiny_raw):
    part_dir = tiny_raw / "books" / "interactions"
    (part_dir / "2024").mkdir(parents=True)
    (part_dir / "a.csv").write_text("reader,isbn,read_at\n")
    (part_dir / "2024" / "b.tsv").write_text("reader,isbn,read_at\n")
    (part_dir / "_SUCCESS").write_text("")
    (part_dir / ".a.csv.crc").write_text("")
    (part_dir / "_tmp").mkdir()
    (part_dir / "_tmp" / "c.parquet").write_text("")
    (tiny_raw / "books" / "interactions.csv").unlink()
    spec = _spec(tiny_raw)
    spec["domains"]["books"]["interactions"]["path"] = "books/interactions"
    _save(tiny_raw, spec)
    fs = load_dataset(tiny_raw).file_set("interactions", "books")
    assert fs.path == f"{tiny_raw}/books/interactions"
    assert fs.files == (str(part_dir / "2024" / "b.tsv"), str(part_dir / "a.csv"))


def test_relative_paths_resolve_against_the_dataset_folder(tmp_path, monkeypatch):
    write_raw(tmp_path / "sets" / "raw")
    monkeypatch.chdir(tmp_path / "sets")
    ds = load_dataset("raw")
    root = str(tmp_path / "sets" / "raw")
    for fs in ds.file_sets:  # made absolute: Spark's JVM may run in another working folder
        assert all(f.startswith(root + os.sep) for f in fs.files)
        assert all(Path(f).is_file() for f in fs.files)
    assert ds.file_set("items", "books").files == (os.path.join(root, "books", "items.csv"),)


def test_paths_outside_the_data_set_folder_are_refused_unless_allowed(tmp_path):
    raw = write_raw(tmp_path / "raw")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (raw / "identity_map.csv").rename(elsewhere / "ids.csv")
    (raw / "link").symlink_to(elsewhere)
    for path in (str(elsewhere / "ids.csv"), "../elsewhere/ids.csv", "link/ids.csv", f"file://{elsewhere}/ids.csv"):
        spec = _spec(raw)
        spec["identity_map"]["path"] = path
        _save(raw, spec)
        assert f"identity_map.path: {path!r} is outside the data set's folder {raw}" in _error(raw)
        files = load_dataset(raw, outside_root=True).file_set("identity_map").files
        assert [os.path.realpath(f) for f in files] == [str(elsewhere / "ids.csv")]


def test_absolute_paths_inside_the_folder_are_fine(tiny_raw):
    spec = _spec(tiny_raw)
    spec["identity_map"]["path"] = str(tiny_raw / "identity_map.csv")
    _save(tiny_raw, spec)
    assert load_dataset(tiny_raw).file_set("identity_map").files == (str(tiny_raw / "identity_map.csv"),)


def test_remote_paths_are_not_listed(tiny_raw):
    spec = _spec(tiny_raw)
    spec["identity_map"]["path"] = "s3a://bucket/raw/identity_map.csv"
    _save(tiny_raw, spec)
    assert "is outside the data set's folder" in _error(tiny_raw)  # another store than the local data set's
    idm = load_dataset(tiny_raw, outside_root=True).file_set("identity_map")
    assert (idm.path, idm.files) == ("s3a://bucket/raw/identity_map.csv", ("s3a://bucket/raw/identity_map.csv",))


def test_generated_synthetic_set_parses(tmp_path):
    from crossrec.data.synthetic import SyntheticSpec, generate

    generate(tmp_path / "syn", SyntheticSpec(users=20, domains=2, items_per_domain=12, topics=3))
    ds = load_dataset(tmp_path / "syn")
    assert len(ds.domains) == 2
    assert all(fs.files for fs in ds.file_sets)


# ------------------------------------------------------------------------------------------------- errors
def test_no_dataset_json(tmp_path):
    msg = _error(tmp_path)
    assert str(tmp_path / "dataset.json") in msg
    assert "not found" in msg


def test_invalid_json(tiny_raw):
    (tiny_raw / "dataset.json").write_text('{"domains": {', encoding="utf-8")
    msg = _error(tiny_raw)
    assert str(tiny_raw / "dataset.json") in msg
    assert "not valid JSON" in msg


def test_not_utf8(tiny_raw):
    (tiny_raw / "dataset.json").write_bytes(b'{"name": "\xff"}')
    assert "not valid JSON" in _error(tiny_raw)


@pytest.mark.parametrize("domains", [None, {}, [], "books"])
def test_no_domains(tmp_path, domains):
    spec = {"name": "x"} if domains is None else {"domains": domains}
    path = _save(tmp_path, spec)
    msg = _error(tmp_path)
    assert str(path) in msg
    assert "'domains' must be a non-empty object" in msg


@pytest.mark.parametrize("spec", [[], "books", 3])
def test_top_level_not_an_object(tmp_path, spec):
    _save(tmp_path, spec)
    assert "dataset.json" in _error(tmp_path)


@pytest.mark.parametrize("name", ["Books!", "Books", "my-books", "books ", "", "bücher"])
def test_bad_domain_name(tiny_raw, name):
    spec = _spec(tiny_raw)
    spec["domains"][name] = spec["domains"].pop("books")
    _save(tiny_raw, spec)
    msg = _error(tiny_raw)
    assert f"domain name {name!r} must match [a-z0-9_]+" in msg
    assert str(tiny_raw / "dataset.json") in msg


@given(st.text(max_size=12).filter(lambda s: "\n" not in s))
def test_domain_names_property(name):
    """A name is accepted iff it is non-empty lower-case [a-z0-9_]; the next check (interactions/items) then fires."""
    with tempfile.TemporaryDirectory() as d:
        _save(Path(d), {"domains": {name: {}}})
        with pytest.raises(RawFormatError) as e:
            load_dataset(d)
    valid = re.fullmatch(r"[a-z0-9_]+", name) is not None
    assert ("must match [a-z0-9_]+" in str(e.value)) is not valid
    assert (f"domains.{name} needs 'interactions' and 'items'" in str(e.value)) is valid


def test_domain_name_with_trailing_newline_is_rejected(tmp_path):
    _save(tmp_path, {"domains": {"books\n": {}}})
    assert "must match" in _error(tmp_path)
    assert DOMAIN_RE.fullmatch("books\n") is None


@pytest.mark.parametrize("missing", ["items", "interactions"])
def test_domain_without_items_or_interactions(tiny_raw, missing):
    spec = _spec(tiny_raw)
    del spec["domains"]["movies"][missing]
    _save(tiny_raw, spec)
    assert "domains.movies needs 'interactions' and 'items'" in _error(tiny_raw)


@pytest.mark.parametrize("key", ["path", "format", "columns"])
def test_file_set_missing_key(tiny_raw, key):
    spec = _spec(tiny_raw)
    del spec["domains"]["books"]["items"][key]
    _save(tiny_raw, spec)
    assert f"domains.books.items: missing key {key!r}" in _error(tiny_raw)


def test_file_set_not_an_object(tiny_raw):
    spec = _spec(tiny_raw)
    spec["domains"]["books"]["items"] = "books/items.csv"
    _save(tiny_raw, spec)
    assert "domains.books.items: expected an object, got str" in _error(tiny_raw)


def test_unknown_format(tiny_raw):
    spec = _spec(tiny_raw)
    spec["domains"]["movies"]["interactions"]["format"] = "xml"
    _save(tiny_raw, spec)
    msg = _error(tiny_raw)
    assert "domains.movies.interactions.format: 'xml' is not one of ['csv', 'jsonl', 'parquet']" in msg
    assert str(tiny_raw / "dataset.json") in msg


@pytest.mark.parametrize("kind, canonical", [("interactions", "user_id"), ("interactions", "item_id"),
                                             ("interactions", "event_ts"), ("items", "item_id")])
def test_required_column_not_mapped(tiny_raw, kind, canonical):
    spec = _spec(tiny_raw)
    del spec["domains"]["books"][kind]["columns"][canonical]
    _save(tiny_raw, spec)
    assert f"domains.books.{kind}.columns: required canonical column(s) [{canonical!r}] not mapped" in _error(tiny_raw)


def test_identity_map_required_column(tiny_raw):
    spec = _spec(tiny_raw)
    del spec["identity_map"]["columns"]["global_user_id"]
    _save(tiny_raw, spec)
    assert "identity_map.columns: required canonical column(s) ['global_user_id'] not mapped" in _error(tiny_raw)


def test_unknown_canonical_column(tiny_raw):
    spec = _spec(tiny_raw)
    spec["domains"]["books"]["interactions"]["columns"]["rating"] = "stars"
    _save(tiny_raw, spec)
    assert "domains.books.interactions.columns: unknown canonical column(s) ['rating']" in _error(tiny_raw)


@pytest.mark.parametrize("columns", [["isbn"], {"item_id": ""}, {"item_id": 3}])
def test_columns_not_a_mapping_of_names(tiny_raw, columns):
    spec = _spec(tiny_raw)
    spec["domains"]["books"]["items"]["columns"] = columns
    _save(tiny_raw, spec)
    assert "domains.books.items.columns: expected an object of canonical -> raw column names" in _error(tiny_raw)


@pytest.mark.parametrize("key, value", [("text_columns", "title"), ("attribute_columns", [""]), ("text_columns", [1])])
def test_text_and_attribute_columns_must_be_lists_of_names(tiny_raw, key, value):
    spec = _spec(tiny_raw)
    spec["domains"]["books"]["items"][key] = value
    _save(tiny_raw, spec)
    assert f"domains.books.items.{key}: expected a list of raw column names" in _error(tiny_raw)


@pytest.mark.parametrize("ts", ["", 0])
def test_empty_timestamp_kind(tiny_raw, ts):
    spec = _spec(tiny_raw)
    spec["domains"]["books"]["interactions"]["timestamp"] = ts
    _save(tiny_raw, spec)
    assert "domains.books.interactions.timestamp" in _error(tiny_raw)


def test_path_does_not_exist(tiny_raw):
    spec = _spec(tiny_raw)
    spec["domains"]["movies"]["items"]["path"] = "movies/catalog.jsonl"
    _save(tiny_raw, spec)
    msg = _error(tiny_raw)
    assert f"domains.movies.items: path {tiny_raw / 'movies' / 'catalog.jsonl'} does not exist" in msg


def test_folder_with_files_of_the_wrong_extension(tiny_raw):
    folder = tiny_raw / "books" / "interactions"
    folder.mkdir()
    (folder / "part-0.csv").write_text("reader,isbn,read_at\n")
    (folder / "part-1.parquet").write_bytes(b"PAR1")
    (folder / "part-2.parquet").write_bytes(b"PAR1")
    spec = _spec(tiny_raw)
    spec["domains"]["books"]["interactions"]["path"] = "books/interactions"
    _save(tiny_raw, spec)
    msg = _error(tiny_raw)
    assert "domains.books.interactions:" in msg
    assert f"{folder / 'part-1.parquet'} does not look like csv" in msg
    assert "2 such file(s)" in msg


def test_single_file_of_the_wrong_extension(tiny_raw):
    spec = _spec(tiny_raw)
    spec["domains"]["books"]["items"]["format"] = "jsonl"
    _save(tiny_raw, spec)
    assert f"{tiny_raw / 'books' / 'items.csv'} does not look like jsonl" in _error(tiny_raw)


def test_folder_of_an_unlisted_domain(tiny_raw):
    (tiny_raw / "music").mkdir()
    (tiny_raw / "music" / "plays.csv").write_text("u,i,t\n")
    msg = _error(tiny_raw)
    assert f"folder {tiny_raw / 'music'} holds 1 data file(s) (e.g. plays.csv) of domain 'music'" in msg
    assert "listed: ['books', 'movies']" in msg


def test_unlisted_folders_without_data_files_or_hidden_are_fine(tiny_raw):
    (tiny_raw / "docs").mkdir()
    (tiny_raw / "docs" / "README.md").write_text("notes")
    for hidden in (".cache", "_old"):
        (tiny_raw / hidden).mkdir()
        (tiny_raw / hidden / "x.csv").write_text("a\n")
    assert load_dataset(tiny_raw).domains == ("books", "movies")


def test_folder_read_by_a_listed_file_set_is_not_an_unknown_domain(tiny_raw):
    (tiny_raw / "shared").mkdir()
    (tiny_raw / "identity_map.csv").rename(tiny_raw / "shared" / "ids.csv")
    spec = _spec(tiny_raw)
    spec["identity_map"]["path"] = "shared/ids.csv"
    _save(tiny_raw, spec)
    assert load_dataset(tiny_raw).file_set("identity_map").files == (str(tiny_raw / "shared" / "ids.csv"),)


def test_unknown_csv_option(tiny_raw):
    spec = _spec(tiny_raw)
    spec["domains"]["books"]["interactions"]["options"] = {"delimiter": ";", "inferSchema": "true", "header": "false"}
    _save(tiny_raw, spec)
    assert "domains.books.interactions.options: unknown option(s) ['header', 'inferSchema']" in _error(tiny_raw)


def test_options_not_an_object(tiny_raw):
    spec = _spec(tiny_raw)
    spec["domains"]["books"]["interactions"]["options"] = "delimiter=;"
    _save(tiny_raw, spec)
    assert "options" in _error(tiny_raw)


def test_raw_columns_are_unique_and_ordered():
    fs = FileSet(kind="items", domain="d", path="p", format="csv", columns={"item_id": "id", "title": "t"},
                 text_columns=("t", "body"), attribute_columns=("id", "brand", "body"))
    assert fs.raw_columns == ["id", "t", "body", "brand"]


# ------------------------------------------------------------------------------------ schema of dataset.json
@pytest.mark.parametrize("where, value, message", [
    (("domains", "books", "items", "path"), 3, "domains.books.items.path: expected a path (a non-empty string), got 3"),
    (("domains", "books", "items", "path"), "", "domains.books.items.path: expected a path"),
    (("domains", "books", "items", "format"), ["csv"], "domains.books.items.format: ['csv'] is not one of"),
    (("extras",), ["cohorts.csv"], "extras: expected an object"),
    (("name",), 7, "name: expected a string, got 7"),
    (("domains", "books", "interactions", "default_event_type"), " ", "default_event_type: expected a non-empty string"),
    (("domains", "books", "interactions", "options"), {"delimiter": ";;"}, "options.delimiter: expected one character, got ';;'"),
    (("domains", "books", "interactions", "options"), {"quote": 1}, "options.quote: expected a string, got int"),
    (("domains", "books", "interactions", "options"), {"encoding": "utf-99"}, "options.encoding: unknown encoding 'utf-99'"),
    (("domains", "books", "interactions", "compression"), "gzip", "domains.books.interactions: unknown key(s) ['compression']"),
    (("domains", "books", "ratings"), {}, "domains.books: unknown key(s) ['ratings']; known ['interactions', 'items']"),
    (("identity",), {}, "unknown key(s) ['identity']; known ['name', 'domains', 'identity_map', 'extras']"),
])
def test_every_key_is_checked_for_its_type_and_allowed_values(tiny_raw, where, value, message):
    spec = _spec(tiny_raw)
    node = spec
    for key in where[:-1]:
        node = node[key]
    node[where[-1]] = value
    _save(tiny_raw, spec)
    msg = _error(tiny_raw)
    assert message in msg and str(tiny_raw / "dataset.json") in msg


@pytest.mark.parametrize("ts, why", [
    ("epoch_seconds", "epoch numbers are 'epoch_s' or 'epoch_ms'"),
    ("YYYY-MM-dd", "letter(s) ['Y'] are not Spark pattern letters"),
    ("dd/MM HH:mm", "it has no year (y)"),
    ("yyyy-ww", "letter(s) ['w']"),
])
def test_a_timestamp_format_typo_is_refused_before_spark_sees_it(tiny_raw, ts, why):
    spec = _spec(tiny_raw)
    spec["domains"]["books"]["interactions"]["timestamp"] = ts
    _save(tiny_raw, spec)
    msg = _error(tiny_raw)
    assert f"domains.books.interactions.timestamp: {ts!r} is neither one of" in msg and why in msg


@pytest.mark.parametrize("ts", ["yyyy-MM-dd HH:mm:ss", "yyyy-MM-dd'T'HH:mm:ss.SSSXXX", "dd.MM.yyyy", "epoch_ms"])
def test_spark_datetime_patterns_with_quoted_text_are_accepted(tiny_raw, ts):
    spec = _spec(tiny_raw)
    spec["domains"]["books"]["interactions"]["timestamp"] = ts
    _save(tiny_raw, spec)
    assert load_dataset(tiny_raw).file_set("interactions", "books").timestamp == ts


def test_one_raw_column_mapped_to_two_canonical_columns_is_refused(tiny_raw):
    spec = _spec(tiny_raw)
    cols = spec["domains"]["books"]["interactions"]["columns"]
    cols["item_id"] = cols["user_id"]
    _save(tiny_raw, spec)
    assert f"domains.books.interactions.columns: raw column {cols['user_id']!r} is mapped to ['user_id', 'item_id']" \
        in _error(tiny_raw)


def test_a_key_named_twice_is_refused(tiny_raw):
    spec = _spec(tiny_raw)
    books = json.dumps(spec["domains"]["books"])
    text = json.dumps(spec).replace('"books": ' + books, f'"books": {books}, "books": {books}')
    assert text.count('"books": {') == 2
    (tiny_raw / "dataset.json").write_text(text, encoding="utf-8")
    msg = _error(tiny_raw)
    assert "key 'books' appears twice in one object" in msg and str(tiny_raw / "dataset.json") in msg


def test_attribute_columns_are_entities_of_their_own_name_by_default(tiny_raw):
    ds = load_dataset(tiny_raw)
    assert ds.file_set("items", "books").entities == {"author": ("author", None)}
    assert ds.file_set("items", "movies").entities == {}
    assert ds.file_set("interactions", "books").entities == {}


def test_entity_declarations_type_separator_and_opt_out(tiny_raw):
    spec = _spec(tiny_raw)
    items = spec["domains"]["books"]["items"]
    items["attribute_columns"] = ["author", "Brand Name", "year"]
    items["entities"] = {"author": {"type": "person", "separator": ";"}, "year": False}
    _save(tiny_raw, spec)
    assert load_dataset(tiny_raw).file_set("items", "books").entities == {
        "author": ("person", ";"), "Brand Name": ("brand_name", None)}


@pytest.mark.parametrize("key, value, message", [
    ("entities", {"publisher": {}}, "entities: ['publisher'] not among attribute_columns ['author']"),
    ("entities", {"author": {"type": "Person"}}, "entities.author.type: must match [a-z0-9_]+, got 'Person'"),
    ("entities", {"author": {"separator": ""}}, "entities.author.separator: expected a non-empty string, got ''"),
    ("entities", {"author": {"kind": "person"}}, "entities.author: unknown key(s) ['kind']"),
    ("entities", {"author": "person"}, "entities.author: expected an object with 'type' and/or 'separator', or false"),
    ("entities", ["author"], "entities: expected an object of attribute column"),
    ("vectors", {"cover": {"dim": 0, "modality": "image"}}, "vectors.cover.dim: expected an integer in [1, 4096], got 0"),
    ("vectors", {"cover": {"dim": True, "modality": "image"}}, "vectors.cover.dim: expected an integer in [1, 4096], got True"),
    ("vectors", {"cover": {"dim": 4, "modality": "Image"}}, "vectors.cover.modality: must match [a-z0-9_]+, got 'Image'"),
    ("vectors", {"cover": {"dim": 4, "modality": "image", "norm": 1}}, "vectors.cover: unknown key(s) ['norm']"),
    ("vectors", {"title": {"dim": 4, "modality": "image"}}, "vectors.title: a vector column cannot also be a mapped, text or attribute"),
    ("vectors", {"a": {"dim": 4, "modality": "image"}, "b": {"dim": 4, "modality": "image"}}, "vectors.b.modality: 'image' is declared twice"),
    ("vectors", [1], "vectors: expected an object of raw column"),
])
def test_bad_entity_and_vector_declarations_are_named(tiny_raw, key, value, message):
    spec = _spec(tiny_raw)
    spec["domains"]["books"]["items"][key] = value
    _save(tiny_raw, spec)
    assert message in _error(tiny_raw)


def test_only_items_declare_entities(tiny_raw):
    spec = _spec(tiny_raw)
    spec["domains"]["books"]["interactions"]["entities"] = {}
    _save(tiny_raw, spec)
    assert "domains.books.interactions.entities: only an items file set declares entities" in _error(tiny_raw)


def test_vector_columns_are_declared_with_dim_and_modality(tiny_raw):
    spec = _spec(tiny_raw)
    spec["domains"]["books"]["items"]["vectors"] = {"cover": {"dim": 16, "modality": "image"}}
    spec["domains"]["movies"]["items"]["vectors"] = {"poster": {"dim": 16, "modality": "image"}}
    _save(tiny_raw, spec)
    ds = load_dataset(tiny_raw)
    books = ds.file_set("items", "books")
    assert books.vectors == {"cover": (16, "image")} and "cover" in books.raw_columns
    assert ds.file_set("interactions", "books").vectors == {}


def test_one_modality_has_one_dim_in_every_domain(tiny_raw):
    spec = _spec(tiny_raw)
    spec["domains"]["books"]["items"]["vectors"] = {"cover": {"dim": 16, "modality": "image"}}
    spec["domains"]["movies"]["items"]["vectors"] = {"poster": {"dim": 8, "modality": "image"}}
    _save(tiny_raw, spec)
    assert ("domains.movies.items.vectors.poster.dim: 8, but domains.books.items.vectors.cover declares modality "
            "'image' with dim 16") in _error(tiny_raw)
