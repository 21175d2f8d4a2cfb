"""The bad-input cases: each a change to the tiny two-domain raw data set (``support.write_raw``: books as CSV,
movies as JSON lines, an identity map) and the answer crossrec must give.

An answer is either a stop (the stage, its exit code, what the message names and what it must not repeat) or a
finished run (quarantined rows by bronze table, domain and reason; duplicates; silver rows). A case may run the
stages twice (``second``: a change made between the two runs), as a nightly run would.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import pyarrow as pa
import pyarrow.parquet as pq

Edit = Callable[[Path], None]


@dataclass(frozen=True)
class Stop:
    """The run stops: ``stage`` exits with ``code``; stderr holds every ``says`` and none of ``hides``."""

    stage: str
    code: int
    says: tuple[str, ...]
    hides: tuple[str, ...] = ()


@dataclass(frozen=True)
class Done:
    """The run finishes. ``quarantined``: {(bronze table, domain, reason): rows}, all of them (none elsewhere);
    ``duplicates``: the duplicate count of silver.interactions; ``silver``: {(table, domain): rows} to check."""

    quarantined: dict = field(default_factory=dict)
    duplicates: int = 0
    silver: dict = field(default_factory=dict)
    users: dict = field(default_factory=dict)  # {domain: distinct users in silver.interactions}


@dataclass(frozen=True)
class Case:
    name: str
    edit: Edit
    expect: Stop | Done
    second: Edit | None = None  # a change between a first and a second run; the answer is the second run's
    env: dict = field(default_factory=dict)


# ------------------------------------------------------------------------------------------------- edits
def spec(fn: Callable[[dict], None]) -> Edit:
    def edit(raw: Path) -> None:
        d = json.loads((raw / "dataset.json").read_text(encoding="utf-8"))
        fn(d)
        (raw / "dataset.json").write_text(json.dumps(d), encoding="utf-8")
    return edit


def setting(path: str, value) -> Edit:
    """Set ``a.b.c`` of dataset.json (``domains.books.interactions.path``) to ``value``."""
    def fn(d: dict) -> None:
        keys = path.split(".")
        node = d
        for k in keys[:-1]:
            node = node[k]
        node[keys[-1]] = value
    return spec(fn)


def text(relpath: str, content: str | bytes, mode: str = "w") -> Edit:
    def edit(raw: Path) -> None:
        p = raw / relpath
        p.parent.mkdir(parents=True, exist_ok=True)
        data = content.encode("utf-8") if isinstance(content, str) else content
        if mode == "a":
            data = p.read_bytes() + data
        elif mode == "prepend":
            data = data + p.read_bytes()
        p.write_bytes(data)
    return edit


def books(*rows: str) -> Edit:
    """Append CSV rows to the books interactions (header ``reader,isbn,read_at,action,stars``)."""
    return text("books/interactions.csv", "".join(r + "\n" for r in rows), "a")


def movies(*rows: dict | str) -> Edit:
    """Append JSON lines to the movies interactions (keys ``uid, movie_id, ts, event``; epoch seconds)."""
    return text("movies/interactions.jsonl", "".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows), "a")


def both(*edits: Edit) -> Edit:
    def edit(raw: Path) -> None:
        for e in edits:
            e(raw)
    return edit


def duplicate_domain_key(raw: Path) -> None:
    d = json.loads((raw / "dataset.json").read_text(encoding="utf-8"))
    books = json.dumps(d["domains"]["books"])
    (raw / "dataset.json").write_text(json.dumps(d).replace(f'"books": {books}', f'"books": {books}, "books": {books}'),
                                      encoding="utf-8")


def outside_path(raw: Path) -> None:
    outside = raw.parent / "elsewhere.csv"
    outside.write_text((raw / "books" / "items.csv").read_text(encoding="utf-8"), encoding="utf-8")
    setting("domains.books.items.path", "../elsewhere.csv")(raw)


def headerless(raw: Path) -> None:
    p = raw / "books" / "interactions.csv"
    p.write_text("".join(p.read_text(encoding="utf-8").splitlines(keepends=True)[1:]), encoding="utf-8")


def identity_folder(raw: Path) -> None:
    (raw / "ids").mkdir()
    (raw / "identity_map.csv").rename(raw / "ids" / "part-0.csv")
    setting("identity_map.path", "ids")(raw)


def movies_as_parquet_with_two_types(raw: Path) -> None:
    """The movies interactions as two Parquet files whose ``ts`` is an integer in one and a string in the other."""
    rows = [json.loads(x) for x in (raw / "movies" / "interactions.jsonl").read_text(encoding="utf-8").splitlines()]
    (raw / "movies" / "interactions.jsonl").unlink()
    folder = raw / "movies" / "interactions"
    folder.mkdir()
    cols = {k: [r[k] for r in rows[:2]] for k in ("uid", "movie_id", "ts", "event")}
    pq.write_table(pa.table(cols), folder / "part-0.parquet")
    cols = {k: [str(r[k]) for r in rows[2:]] for k in ("uid", "movie_id", "ts", "event")}
    pq.write_table(pa.table(cols), folder / "part-1.parquet")
    setting("domains.movies.interactions.path", "movies/interactions")(raw)
    setting("domains.movies.interactions.format", "parquet")(raw)


def drop_movies(raw: Path) -> None:
    def fn(d: dict) -> None:
        del d["domains"]["movies"]
        d["identity_map"] = None
    spec(fn)(raw)
    for f in ("movies/interactions.jsonl", "movies/items.jsonl"):
        (raw / f).rename(raw / (f.replace("/", "-") + ".off"))
    (raw / "movies").rmdir()


def restore_movies(raw: Path) -> None:
    (raw / "movies").mkdir()
    for f in ("movies/interactions.jsonl", "movies/items.jsonl"):
        (raw / (f.replace("/", "-") + ".off")).rename(raw / f)
    d = json.loads((raw / "dataset.json.full").read_text(encoding="utf-8"))
    (raw / "dataset.json").write_text(json.dumps(d), encoding="utf-8")


def keep_full_spec(raw: Path) -> None:
    (raw / "dataset.json.full").write_bytes((raw / "dataset.json").read_bytes())


I, Q, M = "bronze.interactions", "bronze.identity_map", "bronze.items"
SECOND = "2021-01-05T10:00:00Z"
MOVIE = {"uid": "m-1", "movie_id": "mv2", "ts": 1609754400, "event": "view"}
CONFIG = "ingest"  # dataset.json errors stop the first stage

CASES = [
    # ------------------------------------------------------------------ dataset.json: exit 2, key path named
    Case("path_not_a_string", setting("domains.books.interactions.path", 3),
         Stop(CONFIG, 2, ("domains.books.interactions.path: expected a path",))),
    Case("format_is_a_list", setting("domains.movies.items.format", ["jsonl"]),
         Stop(CONFIG, 2, ("domains.movies.items.format: ['jsonl'] is not one of",))),
    Case("extras_not_an_object", setting("extras", ["cohorts.csv"]), Stop(CONFIG, 2, ("extras: expected an object",))),
    Case("timestamp_kind_typo", setting("domains.movies.interactions.timestamp", "epoch_seconds"),
         Stop(CONFIG, 2, ("domains.movies.interactions.timestamp: 'epoch_seconds' is neither", "'epoch_s' or 'epoch_ms'"))),
    Case("week_based_pattern", setting("domains.books.interactions.timestamp", "YYYY-MM-dd"),
         Stop(CONFIG, 2, ("letter(s) ['Y'] are not Spark pattern letters",))),
    Case("unknown_encoding", setting("domains.books.interactions.options", {"encoding": "utf-99"}),
         Stop(CONFIG, 2, ("options.encoding: unknown encoding 'utf-99'",))),
    Case("multi_character_delimiter", setting("domains.books.interactions.options", {"delimiter": "::"}),
         Stop(CONFIG, 2, ("options.delimiter: expected one character, got '::'",))),
    Case("multiline_not_a_boolean", setting("domains.books.interactions.options", {"multiline": "yes"}),
         Stop(CONFIG, 2, ("options.multiline: expected",))),
    Case("duplicate_domain_key", duplicate_domain_key, Stop(CONFIG, 2, ("key 'books' appears twice in one object",))),
    Case("one_raw_column_twice", setting("domains.books.interactions.columns.item_id", "reader"),
         Stop(CONFIG, 2, ("raw column 'reader' is mapped to ['user_id', 'item_id']",))),
    Case("path_outside_the_folder", outside_path, Stop(CONFIG, 2, ("'../elsewhere.csv' is outside the data set's folder",))),
    Case("unknown_file_set_key", setting("domains.books.interactions.compression", "gzip"),
         Stop(CONFIG, 2, ("domains.books.interactions: unknown key(s) ['compression']",))),
    Case("unknown_top_level_key", setting("identity", {}), Stop(CONFIG, 2, ("unknown key(s) ['identity']",))),
    Case("domain_name_not_lower_case", spec(lambda d: d["domains"].__setitem__("Books", d["domains"].pop("books"))),
         Stop(CONFIG, 2, ("domain name 'Books' must match [a-z0-9_]+",))),
    Case("required_column_not_mapped", spec(lambda d: d["domains"]["books"]["interactions"]["columns"].pop("event_ts")),
         Stop(CONFIG, 2, ("required canonical column(s) ['event_ts'] not mapped",))),
    Case("dataset_json_not_json", text("dataset.json", '{"domains": {'), Stop(CONFIG, 2, ("not valid JSON",))),
    Case("dataset_json_not_utf8", text("dataset.json", b'{"name": "\xff"}'), Stop(CONFIG, 2, ("not valid JSON",))),
    Case("folder_of_an_unlisted_domain", text("games/plays.csv", "user,game,ts\nu1,g1,2021-01-01\n"),
         Stop(CONFIG, 2, ("of domain 'games', which dataset.json does not list",))),
    # ------------------------------------------------------------------ files that stop ingest: exit 2
    Case("csv_without_header", headerless,
         Stop("ingest", 2, ("books/interactions.csv: missing required column", "a CSV file needs a header row"),
              hides=("u1", "u2", "2021-01-01"))),
    Case("header_with_a_near_miss", text("books/interactions.csv", "Reader,isbn,read_at,action,stars\nu1,b1,2021-01-01T10:00:00Z,view,1\n"),
         Stop("ingest", 2, ("missing required column 'reader' (mapped to user_id)", "did you mean 'Reader' for 'reader'?"),
              hides=("u1",))),
    Case("domain_with_empty_files", text("movies/interactions.jsonl", ""),
         Stop("ingest", 2, ("domain 'movies': its interactions hold no row", "allow_empty_domains"))),
    Case("every_file_empty", both(text("books/interactions.csv", ""), text("movies/interactions.jsonl", ""),
                                  text("books/items.csv", ""), text("movies/items.jsonl", ""), text("identity_map.csv", "")),
         Stop("ingest", 2, ("the input is empty",))),
    Case("jsonl_with_no_object", text("movies/interactions.jsonl", "[1, 2]\nnot json\n"),
         Stop("ingest", 2, ("movies/interactions.jsonl: missing required column",))),
    # ------------------------------------------------------------------ runs that finish, every row accounted for
    Case("empty_domain_allowed", text("movies/interactions.jsonl", ""),
         Done(silver={("silver.interactions", "books"): 3, ("silver.interactions", "movies"): 0}),
         env={"CROSSREC_ALLOW_EMPTY_DOMAINS": "true"}),
    Case("jsonl_whose_first_line_is_bad", text("movies/interactions.jsonl", "{not json\n", "prepend"),
         Done({(I, "movies", "malformed_line"): 1}, silver={("silver.interactions", "movies"): 3})),
    Case("ragged_csv_rows", books("u3,b1", "u3,b1,2021-01-05T10:00:00Z,view,1,extra,fields"),
         Done({(I, "books", "malformed_line"): 2})),
    Case("quoted_newline_one_record_a_line", books('u1,b1,2021-01-05T10:00:00Z,"view', 'again",1'),
         Done({(I, "books", "malformed_line"): 2})),
    Case("quoted_newline_with_multiline", both(books('u1,b1,2021-01-05T10:00:00Z,"view', 'again",1'),
                                               setting("domains.books.interactions.options", {"multiline": "true"})),
         Done(silver={("silver.interactions", "books"): 4})),
    Case("csv_with_a_byte_order_mark", text("books/interactions.csv", b"\xef\xbb\xbf", "prepend"),
         Done(silver={("silver.interactions", "books"): 3})),
    Case("epoch_in_the_wrong_unit", text("movies/interactions.jsonl", "".join(
        json.dumps({"uid": u, "movie_id": "mv1", "ts": 1609495200000, "event": "view"}) + "\n" for u in ("m-1", "m-2", "m-3"))),
         Stop("clean", 3, ("domain movies: 3 of 3 rows quarantined (100%)", "timestamp_out_of_range 3",
                           "max_quarantine_share"), hides=("m-1",))),
    Case("one_bad_row_in_three_is_not_too_many", movies({"uid": "m-3", "movie_id": "mv1", "ts": "yesterday", "event": "x"}),
         Done({(I, "movies", "unparseable_timestamp"): 1}, silver={("silver.interactions", "movies"): 3})),
    Case("quarantine_share_threshold_is_configurable", text("movies/interactions.jsonl", json.dumps(
        {"uid": "m-1", "movie_id": "mv1", "ts": 1609495200000, "event": "view"}) + "\n"),
         Done({(I, "movies", "timestamp_out_of_range"): 1}), env={"CROSSREC_MAX_QUARANTINE_SHARE": "1.0"}),
    Case("control_characters_and_a_1mb_text", text("books/items.csv", "isbn,title,genre,blurb,author\n"
                                                    "b1,The\x07 Galaxy\tChronicle,scifi," + "word " * 200_000 + ",Ann\n"
                                                    "b2,Sourdough Secrets,cooking,Bread.,Bob\n"),
         Done(silver={("silver.items", "books"): 2})),
    Case("a_1mb_user_id", books("u" * 1_000_000 + ",b1,2021-01-05T10:00:00Z,view,1"),
         Done({(I, "books", "value_too_long"): 1})),
    Case("conflicting_rows_of_one_item_in_one_file", text("books/items.csv", "b1,Another Galaxy,scifi,Zzz.,Ann\n", "a"),
         Done(silver={("silver.items", "books"): 2})),
    Case("unicode_spellings_of_one_id", books("jos\u00e9,b1,2021-01-05T10:00:00Z,view,1", "jose\u0301,b2,2021-01-06T10:00:00Z,view,1"),
         Done(users={"books": 3})),
    Case("parquet_files_with_different_column_types", movies_as_parquet_with_two_types,
         Done(silver={("silver.interactions", "movies"): 3})),
    # one row broken per row rule, in one run (every rule's reason counted apart; the share limit is not the subject)
    Case("one_bad_row_per_rule", books(",b1,2021-01-05T10:00:00Z,view,1", "u1,,2021-01-05T10:00:00Z,view,1", "u1,b1,,view,1",
                                       "u1,b1,yesterday,view,1", "u1,b1,2099-01-01T00:00:00Z,view,1",
                                       "u1,b1,1990-01-01T00:00:00Z,view,1", "u1,b1,2021-01-05T10:00:00Z,view,lots",
                                       "u1,b1,2021-01-05T10:00:00Z,view,-2", "u1,b9,2021-01-05T10:00:00Z,view,1"),
         Done({(I, "books", reason): n for reason, n in (
             ("missing_user_id", 1), ("missing_item_id", 1), ("missing_timestamp", 1), ("unparseable_timestamp", 1),
             ("timestamp_out_of_range", 2), ("unparseable_weight", 1), ("weight_out_of_range", 1),
             ("item_not_in_catalog", 1))}), env={"CROSSREC_MAX_QUARANTINE_SHARE": "1.0"}),
    Case("bytes_invalid_in_the_encoding", text("books/interactions.csv", b"caf\xe9,b1,2021-01-06T00:00:00Z,view,1\n", "a"),
         Done({(I, "books", "invalid_encoding"): 1})),
    Case("exact_duplicate_rows", books("u1,b1,2021-01-01T10:00:00Z,view,1"), Done(duplicates=1)),
    Case("identity_conflict_in_one_file", text("identity_map.csv", "movies,m-1,u9\n", "a"),
         Done({(Q, "movies", "identity_conflict"): 1})),
    Case("identity_row_without_a_global_id", text("identity_map.csv", "movies,m-3,\n", "a"),
         Done({(Q, "movies", "missing_global_user_id"): 1})),
    Case("identity_row_of_an_unknown_domain", text("identity_map.csv", "games,g-1,u1\n", "a"),
         Done({(Q, "games", "unknown_domain"): 1})),
    Case("identity_correction_over_time", identity_folder, second=text("ids/part-1.csv", "domain,local_user,person\nmovies,m-1,u2\n"),
         expect=Done({(Q, "movies", "identity_conflict"): 1}, users={"movies": 2})),
    Case("domain_that_appears_in_a_later_run", both(keep_full_spec, drop_movies), second=restore_movies,
         expect=Done(silver={("silver.interactions", "books"): 3, ("silver.interactions", "movies"): 3})),
    Case("domain_that_disappears", lambda raw: None, second=drop_movies,
         expect=Stop("clean", 3, ("domain movies: 3 of 3 rows quarantined", "unknown_domain 3"))),
]
