"""Ingest: raw file sets -> ``bronze.interactions``, ``bronze.items``, ``bronze.identity_map``.

Bronze holds exactly what arrived: every raw value as text under its canonical name, the raw line of
rows that could not be parsed (``corrupt_record``), and the ingest metadata (domain, source file, file
checksum, run id). It is append-only; a file whose bytes (sha256) were ingested before into the same
table and domain is skipped, so re-ingesting the same files never duplicates rows.

Everything is checked before anything is written: a missing required column stops the run with an error
naming the file and the column.
"""
from __future__ import annotations

import csv
import difflib
import hashlib
import io
import json
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path

from crossrec import columns as C
from crossrec.data.rawformat import Dataset, FileSet, RawFormatError, _is_local, _local

log = logging.getLogger(__name__)

BRONZE_TABLE = {"interactions": "bronze.interactions", "items": "bronze.items", "identity_map": "bronze.identity_map"}
CORRUPT_COL = C.CORRUPT_RECORD
_HASH_CHUNK = 1 << 20


@dataclass
class FilePlan:
    """What ingest will do with the files of one file set."""

    file_set: FileSet
    new: list[tuple[str, str]] = field(default_factory=list)  # (path, sha256) to read
    seen: list[tuple[str, str]] = field(default_factory=list)  # ingested by an earlier run
    duplicate: list[tuple[str, str]] = field(default_factory=list)  # same bytes as another file of this run
    empty: list[str] = field(default_factory=list)  # zero-byte or header-only files
    lines: dict[str, int] = field(default_factory=dict)  # non-blank lines of a new local line-format file (see digest)


def sha256_file(path: str) -> str:
    """sha256 of a local file's bytes, streamed."""
    return digest(path)[0]


_BOM = "\ufeff".encode()
_BLANK = b" \t\x0b\x0c\r\n"  # Java's \s: what count_raw_records' Spark rule calls blank, with U+FEFF


def digest(path: str, count_lines: bool = False) -> tuple[str, int | None]:
    """sha256 of a local file's bytes and, with ``count_lines``, its non-blank lines, from one streamed read.

    A line ends at LF, CR or CRLF (as Spark's line reader splits); it is blank when it holds nothing but ASCII
    whitespace and byte order marks, the rule :func:`count_raw_records` applies with Spark. Counting is only right for
    an encoding in which those characters are single ASCII bytes (:func:`ascii_lines`)."""
    h = hashlib.sha256()
    lines, carry = 0, b""
    with open(_local(path), "rb") as fh:
        for chunk in iter(lambda: fh.read(_HASH_CHUNK), b""):
            h.update(chunk)
            if count_lines:
                buf = carry + chunk
                cut = max(buf.rfind(b"\n"), buf.rfind(b"\r")) + 1  # complete lines before it, a partial one after
                lines += _non_blank(buf[:cut])
                carry = buf[cut:]
    return h.hexdigest(), (lines + _non_blank(carry) if count_lines else None)


def _non_blank(buf: bytes) -> int:
    """Non-blank lines of ``buf`` (whole lines; see :func:`digest`)."""
    buf = buf.replace(_BOM, b"").replace(b"\r", b"\n")  # CRLF becomes a line and a blank one
    return sum(1 for line in buf.split(b"\n") if line.strip(_BLANK))


def ascii_lines(fs: FileSet) -> bool:
    """Whether the files of ``fs`` are line records (JSON lines, single-line CSV) in an encoding whose line breaks,
    whitespace and byte order mark are those of UTF-8: their records can be counted on the bytes (:func:`digest`)."""
    if fs.format == "parquet" or (fs.format == "csv" and fs.options.get("multiline") == "true"):
        return False
    probe = " \t\r\nx"
    try:
        return probe.encode(fs.options.get("encoding", "utf-8")) == probe.encode()
    except (LookupError, UnicodeError):
        return False


def remote_checksums(spark, path: str) -> list[tuple[str, str]]:
    """(file, sha256) of every file under a remote (Hadoop URI) path, computed by Spark."""
    from pyspark.sql import functions as F

    rows = (
        spark.read.format("binaryFile")
        .option("recursiveFileLookup", "true")
        .load(path)
        .select("path", F.sha2("content", 256).alias("sha"))
        .collect()  # one row per file: small
    )
    return sorted((r.path, r.sha) for r in rows)


def _first_line(path: str, encoding: str) -> str | None:
    """The first line of a text file, or None for an empty file."""
    with open(_local(path), "rb") as fh:
        raw = fh.readline()
    if not raw.strip():
        return None
    return raw.decode(encoding, errors="replace").lstrip("\ufeff")


JSONL_PROBE_LINES = 100  # non-blank lines read for a file's first JSON object before the file is refused


def file_columns(fs: FileSet, path: str, spark=None) -> list[str] | None:
    """The columns a raw file declares (CSV header, first JSON object's keys, Parquet schema); None if empty.
    A CSV file on a remote store is read by ``spark`` (its header line only): columns bind by name everywhere."""
    if fs.format == "csv" and not _is_local(path):
        reader = spark.read.option("header", True).option("sep", fs.options.get("delimiter", ","))
        cols = reader.option("encoding", fs.options.get("encoding", "utf-8")).csv(path).columns
        return [c.strip().lstrip("\ufeff") for c in cols] or None
    if fs.format == "csv":
        line = _first_line(path, fs.options.get("encoding", "utf-8"))
        if line is None:
            return None
        reader = csv.reader(io.StringIO(line), delimiter=fs.options.get("delimiter", ","), quotechar=fs.options.get("quote", '"'))
        return [c.strip() for c in next(reader)]
    if fs.format == "jsonl":  # the first JSON object names the keys; bad lines before it are quarantined by clean
        bad = 0
        with open(_local(path), "rb") as fh:
            for number, raw in enumerate(fh, 1):
                if not raw.strip():
                    continue
                try:
                    obj = json.loads(raw.decode(fs.options.get("encoding", "utf-8"), errors="replace"))
                except json.JSONDecodeError:
                    obj = None
                if isinstance(obj, dict):
                    return list(obj)
                bad += 1
                if bad >= JSONL_PROBE_LINES:
                    raise RawFormatError(f"{path}: none of the first {bad} non-blank lines (to line {number}) is a JSON "
                                         "object: not JSON lines")
        return [] if bad else None  # only bad lines: no columns (check_columns names the file)
    import pyarrow.parquet as pq

    meta = pq.read_metadata(_local(path))
    if meta.num_rows == 0:
        return None
    return list(meta.schema.to_arrow_schema().names)


def has_rows(fs: FileSet, path: str) -> bool:
    """Whether a local CSV file has at least one non-blank line after its header."""
    if fs.format != "csv":
        return True  # file_columns already returned None for JSON/Parquet files without records
    with open(_local(path), "rb") as fh:
        fh.readline()
        return any(line.strip() for line in fh)


def check_columns(fs: FileSet, path: str, columns: list[str]) -> None:
    """Raise a RawFormatError naming the file and column when a mapped column is absent.

    For JSON lines only the required columns are checked (a record may omit optional keys).
    """
    wanted = fs.raw_columns
    if fs.format == "jsonl":
        required = {"interactions": ("user_id", "item_id", "event_ts"), "items": ("item_id",)}.get(fs.kind, tuple(fs.columns))
        wanted = [fs.columns[c] for c in required]
    missing = [c for c in wanted if c not in columns]
    if missing:
        canon = {v: k for k, v in fs.columns.items()}
        named = ", ".join(f"'{c}'" + (f" (mapped to {canon[c]})" if c in canon else "") for c in missing)
        if fs.format == "csv":  # the first line may be data (no header): name no value of it, only near misses
            near = {c: difflib.get_close_matches(c, columns, n=1, cutoff=0.75) for c in missing}
            hints = "; ".join(f"did you mean {m[0]!r} for {c!r}?" for c, m in near.items() if m)
            has = f"its first line has {len(columns)} field(s), not the mapped names" + (f" ({hints})" if hints else "") + \
                " (a CSV file needs a header row)"
        else:
            has = f"the file has {columns}"
        raise RawFormatError(f"{path}: missing required column {named} for {fs.label}; {has}")


def plan_files(spark, dataset: Dataset, seen_checksums: dict[tuple[str, str | None], set[str]]) -> list[FilePlan]:
    """Checksum and header-check every file; decide which are new. Raises before anything is written."""
    plans = []
    for fs in dataset.file_sets:
        plan = FilePlan(fs)
        seen = seen_checksums.get((BRONZE_TABLE[fs.kind], fs.domain), set())
        this_run: dict[str, str] = {}
        lines: dict[str, int] = {}  # counted while hashed: what count_raw_records need not read again
        if _is_local(fs.path):
            pairs, count_lines = [], ascii_lines(fs)
            for f in fs.files:
                sha, lines[f] = digest(f, count_lines)
                pairs.append((f, sha))
        else:
            pairs = remote_checksums(spark, fs.path)
        for path, sha in pairs:
            if sha in seen:
                plan.seen.append((path, sha))
                continue
            if sha in this_run:
                log.warning("%s: same bytes as %s; skipped as a duplicate file", path, this_run[sha])
                plan.duplicate.append((path, sha))
                continue
            this_run[sha] = path
            remote_csv = fs.format == "csv" and not _is_local(path)
            cols = file_columns(fs, path, spark) if _is_local(path) or remote_csv else None
            if (_is_local(path) or remote_csv) and (cols is None or (_is_local(path) and not has_rows(fs, path))):
                plan.empty.append(path)
                continue
            if cols is not None:
                check_columns(fs, path, cols)
            plan.new.append((path, sha))
            if lines.get(path) is not None:
                plan.lines[path] = lines[path]
        plans.append(plan)
    if not any(plan.file_set.files for plan in plans):
        raise RawFormatError(f"{dataset.root}: no input files in any file set of dataset.json")
    return plans


def read_file_set(spark, fs: FileSet, files: list[tuple[str, str]]):
    """Read ``files`` of one file set as strings under canonical names, plus ``corrupt_record``,
    ``source_file`` and ``source_checksum``. Files with different column orders are read separately."""
    from functools import reduce

    from pyspark.sql import DataFrame
    from pyspark.sql import functions as F
    from pyspark.sql import types as T

    groups: dict[tuple, list[str]] = {}
    for path, _ in files:
        cols = file_columns(fs, path, spark) if fs.format == "csv" else fs.raw_columns
        # Parquet files whose columns differ in type are read apart (Spark refuses to merge them); all become text
        types = _parquet_types(path) if (_is_local(path) and fs.format == "parquet") else ()
        groups.setdefault((tuple(cols), types), []).append(path)
    frames = []
    for (cols, _), paths in groups.items():
        if fs.format == "parquet":
            raw = spark.read.parquet(*paths)
            raw = raw.select(*[F.col(f"`{c}`").cast("string").alias(c) if c in raw.columns else F.lit(None).cast("string").alias(c) for c in cols], F.lit(None).cast("string").alias(CORRUPT_COL), F.col("_metadata.file_path").alias("_file"))
        else:
            schema = T.StructType([T.StructField(c, T.StringType()) for c in cols] + [T.StructField(CORRUPT_COL, T.StringType())])
            reader = spark.read.schema(schema).option("mode", "PERMISSIVE").option("columnNameOfCorruptRecord", CORRUPT_COL)
            reader = reader.option("encoding", fs.options.get("encoding", "utf-8"))
            if fs.format == "csv":
                # one record a line unless the file set says records span lines (quoted newlines): multiLine
                # reads each file whole, in one task
                reader = reader.option("header", True).option("multiLine", fs.options.get("multiline") == "true")
                reader = reader.option("sep", fs.options.get("delimiter", ",")).option("quote", fs.options.get("quote", '"'))
                if "escape" in fs.options:
                    reader = reader.option("escape", fs.options["escape"])
                raw = reader.csv(paths)
            else:
                raw = reader.json(paths)
            raw = raw.select(*[F.col(f"`{c}`") for c in cols], F.col(CORRUPT_COL), F.col("_metadata.file_path").alias("_file"))
        frames.append(raw)
    df = reduce(DataFrame.unionByName, frames)
    # map the URI Spark reports back to the path we hashed: looked up as Spark spells a local path (a map lookup a
    # row), else decoded and normalised (a regex and a URL decode a row), for a path Spark spells otherwise
    norm = {_norm_path(p): (p, sha) for p, sha in files}
    spelt = {_spark_uri(p): (p, sha) for p, sha in files if _is_local(p)}

    decoded = F.url_decode(F.regexp_replace("_file", r"^file:(//)?", ""))

    def looked_up(part: int):  # 0: the path, 1: its checksum
        slow = F.create_map(*[x for k, v in norm.items() for x in (F.lit(k), F.lit(v[part]))])[decoded]
        if not spelt:
            return slow
        return F.coalesce(F.create_map(*[x for k, v in spelt.items() for x in (F.lit(k), F.lit(v[part]))])[F.col("_file")], slow)

    df = df.withColumn(C.SOURCE_FILE, F.coalesce(looked_up(0), F.col("_file")))
    df = df.withColumn(C.SOURCE_CHECKSUM, looked_up(1)).drop("_file")
    return to_canonical(df, fs)


def _parquet_types(path: str) -> tuple[str, ...]:
    import pyarrow.parquet as pq

    return tuple(f"{f.name}:{f.type}" for f in pq.read_schema(_local(path)))


def check_empty_domains(plans: list[FilePlan], allow: bool) -> None:
    """A domain whose interactions or items file set holds no row (files empty or header-only, none ingested
    before) is an error naming the domain and its files, or a warning when ``allow`` (config
    ``allow_empty_domains``)."""
    for plan in plans:
        fs = plan.file_set
        if fs.domain is None or plan.new or plan.seen or plan.duplicate:
            continue
        msg = (f"domain {fs.domain!r}: its {fs.kind} hold no row ({len(plan.empty)} empty or header-only file(s), "
               f"e.g. {plan.empty[:2]})")
        if not allow:
            raise RawFormatError(f"{msg}; fill them, drop the domain from dataset.json, or set allow_empty_domains = true")
        log.warning("%s; allowed by allow_empty_domains", msg)


def _spark_uri(path: str) -> str:
    """How Spark's ``_metadata.file_path`` spells a local file (``file:`` and the percent-encoded absolute path), as far
    as it can be foreseen: a path it spells otherwise is matched through :func:`_norm_path`."""
    from urllib.parse import quote

    return "file:" + quote(str(Path(_local(path)).resolve()), safe="/!$&'()*+,;=:@")


def _norm_path(path: str) -> str:
    """The key a file's path and Spark's ``_metadata.file_path`` (``file:``/``file://`` stripped) share."""
    if path.startswith("file:"):
        path = re.sub(r"^file:(//)?", "", path)
    if "://" not in path:
        return str(Path(path).resolve())
    return path


def to_canonical(df, fs: FileSet):
    """Rename raw columns to canonical ones (strings); items keep text, attribute and vector columns as maps."""
    from pyspark.sql import functions as F

    def raw(canonical: str):
        return F.col(f"`{fs.columns[canonical]}`") if canonical in fs.columns else F.lit(None).cast("string")

    meta = [F.col(CORRUPT_COL), F.col(C.SOURCE_FILE), F.col(C.SOURCE_CHECKSUM)]
    if fs.kind == "interactions":
        cols = [raw(c).alias(c) for c in (C.USER_ID, C.ITEM_ID, C.EVENT_TYPE, C.EVENT_TS, C.WEIGHT)]
    elif fs.kind == "items":
        text = F.create_map(*[x for i, c in enumerate(fs.text_columns) for x in (F.lit(f"{i:02d}_{c}"), F.col(f"`{c}`"))]) if fs.text_columns else F.create_map().cast("map<string,string>")
        attrs = F.create_map(*[x for c in fs.attribute_columns for x in (F.lit(c), F.col(f"`{c}`"))]) if fs.attribute_columns else F.create_map().cast("map<string,string>")
        vecs = F.create_map(*[x for c in fs.vectors for x in (F.lit(c), F.col(f"`{c}`"))]) if fs.vectors else F.create_map().cast("map<string,string>")
        cols = [raw(C.ITEM_ID).alias(C.ITEM_ID), raw(C.TITLE).alias(C.TITLE), raw(C.CATEGORY).alias(C.CATEGORY), text.alias(C.TEXT_FIELDS),
                attrs.alias(C.ATTRIBUTES), vecs.alias(C.VECTORS)]
    else:
        cols = [raw(c).alias(c) for c in (C.DOMAIN, C.USER_ID, C.GLOBAL_USER_ID)]
    out = df.select(*cols, *meta)
    if fs.domain is not None:
        out = out.withColumn(C.DOMAIN, F.lit(fs.domain))
    return out


def count_raw_records(spark, fs: FileSet, paths: list[str], lines: dict[str, int] | None = None) -> int | None:
    """Records in ``paths`` counted without the file set's parser: the accounting's independent input count.

    Parquet: the row counts of the files' footers. Line formats (CSV, JSON lines): the non-blank lines, less one
    header line per CSV file with a line; ``lines`` gives them per path where :func:`plan_files` counted them while
    hashing, the others are counted by Spark. None for multi-line CSV (a record may span lines: only the parser can
    count it).
    """
    from pyspark.sql import functions as F

    if not paths:
        return 0
    lines = lines or {}
    if fs.format != "parquet" and all(p in lines for p in paths):
        return sum(n - 1 if fs.format == "csv" and n else n for n in (lines[p] for p in paths))
    if fs.format == "parquet":
        if all(_is_local(p) for p in paths):
            import pyarrow.parquet as pq

            return sum(pq.ParquetFile(_local(p)).metadata.num_rows for p in paths)
        return spark.read.parquet(*paths).count()
    if fs.format == "csv" and fs.options.get("multiline") == "true":
        return None
    lines = spark.read.text(paths).select(F.col("value"), F.col("_metadata.file_path").alias("_file"))
    blank = F.length(F.regexp_replace("value", r"^[\s\x{FEFF}]+|\s+$", "")) == 0
    counts = lines.where(~blank).groupBy("_file").count().collect()
    headers = len(counts) if fs.format == "csv" else 0  # each file with a line has its header
    return sum(r["count"] for r in counts) - headers
