"""The raw input format: ``dataset.json`` and the file sets it names (docs/raw-format.md).

:func:`load_dataset` parses and checks the mapping, and lists the files of every file set, with errors
that name the file and the key. Reading the files is the ingest stage's work (``crossrec.data.ingest``).
"""
from __future__ import annotations

import codecs
import json
import logging
import os
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

FORMATS = {"csv": (".csv", ".tsv", ".txt"), "jsonl": (".jsonl", ".json", ".ndjson"), "parquet": (".parquet",)}
DOMAIN_RE = re.compile(r"[a-z0-9_]+")  # always used with fullmatch
TIMESTAMP_KINDS = ("iso8601", "epoch_s", "epoch_ms")
# Spark's datetime pattern letters; the week-based ones (Y w W u e c), which Spark refuses, are not among them
SPARK_PATTERN_LETTERS = frozenset("GyDMLdQqEFahKkHmsSVzOXxZ")

TOP_KEYS = ("name", "domains", "identity_map", "extras")
DOMAIN_KEYS = ("interactions", "items")
FILE_SET_KEYS = ("path", "format", "columns", "options", "timestamp", "default_event_type", "text_columns",
                 "attribute_columns", "entities", "vectors")
ENTITY_KEYS = ("type", "separator")
VECTOR_KEYS = ("dim", "modality")
MAX_VECTOR_DIM = 4096
ENTITY_TYPE_RE = re.compile(r"[a-z0-9_]+")  # always used with fullmatch
CSV_OPTIONS = ("delimiter", "quote", "encoding", "escape", "multiline")

INTERACTION_REQUIRED = ("user_id", "item_id", "event_ts")
INTERACTION_OPTIONAL = ("event_type", "weight")
ITEM_REQUIRED = ("item_id",)
ITEM_OPTIONAL = ("title", "category")
IDENTITY_REQUIRED = ("domain", "user_id", "global_user_id")


class RawFormatError(ValueError):
    """The raw data does not follow the documented format; the message names the file and key/column."""


@dataclass(frozen=True)
class FileSet:
    """One set of raw files of one kind (interactions, items, identity map), in one format."""

    kind: str  # interactions | items | identity_map
    domain: str | None  # None for the identity map
    path: str
    format: str
    columns: dict[str, str]  # canonical name -> raw column name
    options: dict[str, str] = field(default_factory=dict)
    timestamp: str = "iso8601"
    default_event_type: str = "interaction"
    text_columns: tuple[str, ...] = ()
    attribute_columns: tuple[str, ...] = ()
    files: tuple[str, ...] = ()
    # attribute column -> (entity type, separator or None): the attributes that are entities (silver.item_entities)
    entities: dict[str, tuple[str, str | None]] = field(default_factory=dict)
    # vector column -> (dim, modality): precomputed item vectors (a list of floats; silver.items.vectors[modality])
    vectors: dict[str, tuple[int, str]] = field(default_factory=dict)

    @property
    def raw_columns(self) -> list[str]:
        """Every raw column this file set reads, each once, in a stable order."""
        cols = list(self.columns.values()) + list(self.text_columns) + list(self.attribute_columns) + list(self.vectors)
        return list(dict.fromkeys(cols))

    @property
    def label(self) -> str:
        return f"{self.domain}/{self.kind}" if self.domain else self.kind


@dataclass(frozen=True)
class Dataset:
    """A parsed ``dataset.json``: its domains and every file set."""

    name: str
    root: str
    domains: tuple[str, ...]
    file_sets: tuple[FileSet, ...]
    extras: dict[str, Any] = field(default_factory=dict)

    def file_set(self, kind: str, domain: str | None = None) -> FileSet | None:
        for fs in self.file_sets:
            if fs.kind == kind and fs.domain == domain:
                return fs
        return None


def _is_local(path: str) -> bool:
    return "://" not in path or path.startswith("file://")


def _local(path: str) -> str:
    return path.removeprefix("file://")


def _list_files(path: str, fmt: str, where: str) -> tuple[str, ...]:
    """Files of a file set: the file itself, or every non-hidden file in the folder (recursively)."""
    if not _is_local(path):
        # remote lakes: let Spark list the folder; hidden files are skipped by Spark itself
        return (path,)
    p = Path(_local(path))
    if p.is_file():
        files = [p]
    elif p.is_dir():
        files = sorted(f for f in p.rglob("*") if f.is_file() and not any(part.startswith((".", "_")) for part in f.relative_to(p).parts))
    else:
        raise RawFormatError(f"{where}: path {path} does not exist")
    wrong = [f for f in files if not f.name.lower().endswith(FORMATS[fmt])]
    if wrong:
        raise RawFormatError(
            f"{where}: {wrong[0]} does not look like {fmt} (expected {', '.join(FORMATS[fmt])}); "
            f"{len(wrong)} such file(s) under {path}"
        )
    return tuple(str(f) for f in files)


def _check_keys(spec: dict, allowed: tuple[str, ...], where: str) -> None:
    unknown = sorted(set(spec) - set(allowed))
    if unknown:
        raise RawFormatError(f"{where}: unknown key(s) {unknown}; known {list(allowed)}")


def _check_timestamp(ts: Any, where: str) -> None:
    """One of :data:`TIMESTAMP_KINDS` or a Spark datetime pattern with a year (quoted text allowed)."""
    if ts in TIMESTAMP_KINDS:
        return
    if not isinstance(ts, str) or not ts:
        raise RawFormatError(f"{where}: expected one of {TIMESTAMP_KINDS} or a Spark datetime pattern")
    letters = set(re.sub(r"'[^']*'", "", ts)) & set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")
    bad = sorted(letters - SPARK_PATTERN_LETTERS)
    if bad or "y" not in letters:
        why = f"letter(s) {bad} are not Spark pattern letters" if bad else "it has no year (y)"
        hint = "; epoch numbers are 'epoch_s' or 'epoch_ms'" if "epoch" in ts.lower() else ""
        raise RawFormatError(f"{where}: {ts!r} is neither one of {TIMESTAMP_KINDS} nor a Spark datetime pattern such "
                             f"as 'yyyy-MM-dd HH:mm:ss' ({why}){hint}")


def _check_options(options: Any, where: str) -> dict[str, str]:
    if not isinstance(options, dict):
        raise RawFormatError(f"{where}: expected an object such as {{\"delimiter\": \";\"}}")
    bad_opts = set(options) - set(CSV_OPTIONS)
    if bad_opts:
        raise RawFormatError(f"{where}: unknown option(s) {sorted(bad_opts)}")
    for name, value in options.items():
        if not isinstance(value, str):
            raise RawFormatError(f"{where}.{name}: expected a string, got {type(value).__name__}")
        if name == "multiline" and value not in ("true", "false"):
            raise RawFormatError(f"{where}.multiline: expected \"true\" or \"false\", got {value!r}")
        if name in ("delimiter", "quote", "escape") and len(value) != 1:
            raise RawFormatError(f"{where}.{name}: expected one character, got {value!r}")
    if "encoding" in options:
        try:
            codecs.lookup(options["encoding"])
        except LookupError:
            raise RawFormatError(f"{where}.encoding: unknown encoding {options['encoding']!r} (e.g. utf-8, latin-1, "
                                 "utf-16)") from None
    return dict(options)


def _resolve_path(path: Any, root: str, where: str, outside_root: bool) -> str:
    """The file set's path made absolute against ``root``; outside ``root`` only when ``outside_root``."""
    if not isinstance(path, str) or not path:
        raise RawFormatError(f"{where}: expected a path (a non-empty string), got {path!r}")
    full = path if ("://" in path or os.path.isabs(path)) else os.path.join(root, path)
    if _is_local(full):
        full = os.path.abspath(_local(full))  # the JVM's working folder may differ from Python's
    if outside_root:
        return full
    if _is_local(full) and _is_local(root):
        base = os.path.realpath(_local(root))
        inside = os.path.commonpath([base, os.path.realpath(full)]) == base
    else:
        inside = not _is_local(full) and not _is_local(root) and ".." not in full.split("/") and \
            full.startswith(root.rstrip("/") + "/")
    if not inside:
        raise RawFormatError(f"{where}: {path!r} is outside the data set's folder {root}; move the files into it, "
                             "or set raw_paths_outside_root = true in the crossrec config to read them there")
    return full


def _file_set(kind: str, domain: str | None, spec: Any, root: str, where: str, outside_root: bool) -> FileSet:
    if not isinstance(spec, dict):
        raise RawFormatError(f"{where}: expected an object, got {type(spec).__name__}")
    for key in ("path", "format", "columns"):
        if key not in spec:
            raise RawFormatError(f"{where}: missing key {key!r}")
    _check_keys(spec, FILE_SET_KEYS, where)
    fmt = spec["format"]
    if not isinstance(fmt, str) or fmt not in FORMATS:
        raise RawFormatError(f"{where}.format: {fmt!r} is not one of {sorted(FORMATS)}")
    cols = spec["columns"]
    if not isinstance(cols, dict) or not all(isinstance(v, str) and v for v in cols.values()):
        raise RawFormatError(f"{where}.columns: expected an object of canonical -> raw column names")
    required, optional = {
        "interactions": (INTERACTION_REQUIRED, INTERACTION_OPTIONAL),
        "items": (ITEM_REQUIRED, ITEM_OPTIONAL),
        "identity_map": (IDENTITY_REQUIRED, ()),
    }[kind]
    missing = [c for c in required if c not in cols]
    if missing:
        raise RawFormatError(f"{where}.columns: required canonical column(s) {missing} not mapped")
    unknown = [c for c in cols if c not in required + optional]
    if unknown:
        raise RawFormatError(f"{where}.columns: unknown canonical column(s) {unknown}; known {list(required + optional)}")
    twice = {raw: [c for c, r in cols.items() if r == raw] for raw, n in Counter(cols.values()).items() if n > 1}
    if twice:
        raw, canon = next(iter(twice.items()))
        raise RawFormatError(f"{where}.columns: raw column {raw!r} is mapped to {canon}; each canonical column needs "
                             "its own raw column")
    ts = spec.get("timestamp", "iso8601")
    _check_timestamp(ts, f"{where}.timestamp")
    event_type = spec.get("default_event_type", "interaction")
    if not isinstance(event_type, str) or not event_type.strip():
        raise RawFormatError(f"{where}.default_event_type: expected a non-empty string, got {event_type!r}")
    text_cols = spec.get("text_columns")
    if text_cols is None:
        text_cols = [cols["title"]] if kind == "items" and "title" in cols else []
    attr_cols = spec.get("attribute_columns", [])
    for name, value in (("text_columns", text_cols), ("attribute_columns", attr_cols)):
        if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
            raise RawFormatError(f"{where}.{name}: expected a list of raw column names")
    entities = _check_entities(spec.get("entities", {}), attr_cols, f"{where}.entities") if kind == "items" else {}
    if kind != "items" and "entities" in spec:
        raise RawFormatError(f"{where}.entities: only an items file set declares entities")
    if kind != "items" and "vectors" in spec:
        raise RawFormatError(f"{where}.vectors: only an items file set declares vectors")
    vectors = _check_vectors(spec.get("vectors", {}), list(cols.values()) + text_cols + attr_cols, f"{where}.vectors")
    options = _check_options(spec.get("options", {}), f"{where}.options")
    full = _resolve_path(spec["path"], root, f"{where}.path", outside_root)
    return FileSet(
        kind=kind,
        domain=domain,
        path=full,
        format=fmt,
        columns=dict(cols),
        options=options,
        timestamp=ts,
        default_event_type=event_type,
        text_columns=tuple(text_cols),
        attribute_columns=tuple(attr_cols),
        files=_list_files(full, fmt, where),
        entities=entities,
        vectors=vectors,
    )


def _check_vectors(spec: Any, other_columns: list[str], where: str) -> dict[str, tuple[int, str]]:
    """``{"image_vec": {"dim": 64, "modality": "image"}}``: raw columns holding a list of ``dim`` floats per item (a
    Parquet list, a JSON array, or a JSON array's text in a CSV cell), one column per modality."""
    if not isinstance(spec, dict):
        raise RawFormatError(f"{where}: expected an object of raw column -> {{\"dim\", \"modality\"}}")
    out: dict[str, tuple[int, str]] = {}
    for col, decl in spec.items():
        if not isinstance(decl, dict):
            raise RawFormatError(f"{where}.{col}: expected an object with 'dim' and 'modality', got {decl!r}")
        _check_keys(decl, VECTOR_KEYS, f"{where}.{col}")
        dim, modality = decl.get("dim"), decl.get("modality")
        if not isinstance(dim, int) or isinstance(dim, bool) or not 1 <= dim <= MAX_VECTOR_DIM:
            raise RawFormatError(f"{where}.{col}.dim: expected an integer in [1, {MAX_VECTOR_DIM}], got {dim!r}")
        if not isinstance(modality, str) or not ENTITY_TYPE_RE.fullmatch(modality):
            raise RawFormatError(f"{where}.{col}.modality: must match [a-z0-9_]+, got {modality!r}")
        if col in other_columns:
            raise RawFormatError(f"{where}.{col}: a vector column cannot also be a mapped, text or attribute column")
        if modality in {m for _, m in out.values()}:
            raise RawFormatError(f"{where}.{col}.modality: {modality!r} is declared twice in this file set")
        out[col] = (dim, modality)
    return out


def _check_entities(spec: Any, attr_cols: list[str], where: str) -> dict[str, tuple[str, str | None]]:
    """Every attribute column is an entity of its own name, single-valued, unless ``entities`` says otherwise:
    ``{"author": {"type": "person", "separator": ";"}, "year": false}`` -- a declared type links attributes of
    different names (a book's author, a film's director), a separator splits a multi-valued cell, ``false`` keeps
    the attribute out of the entities."""
    if not isinstance(spec, dict):
        raise RawFormatError(f"{where}: expected an object of attribute column -> {{\"type\", \"separator\"}} or false")
    unknown = sorted(set(spec) - set(attr_cols))
    if unknown:
        raise RawFormatError(f"{where}: {unknown} not among attribute_columns {attr_cols}")
    out: dict[str, tuple[str, str | None]] = {}
    for col in attr_cols:
        decl = spec.get(col, {})
        if decl is False:
            continue
        if not isinstance(decl, dict):
            raise RawFormatError(f"{where}.{col}: expected an object with 'type' and/or 'separator', or false; got {decl!r}")
        _check_keys(decl, ENTITY_KEYS, f"{where}.{col}")
        etype, sep = decl.get("type", re.sub(r"[^a-z0-9_]+", "_", col.lower()).strip("_") or "attribute"), decl.get("separator")
        if not isinstance(etype, str) or not ENTITY_TYPE_RE.fullmatch(etype):
            raise RawFormatError(f"{where}.{col}.type: must match [a-z0-9_]+, got {etype!r}")
        if sep is not None and (not isinstance(sep, str) or not sep):
            raise RawFormatError(f"{where}.{col}.separator: expected a non-empty string, got {sep!r}")
        out[col] = (etype, sep)
    return out


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict:
    """``json.load`` hook: an object that names a key twice is an error (JSON would keep the last silently)."""
    seen = Counter(k for k, _ in pairs)
    twice = sorted(k for k, n in seen.items() if n > 1)
    if twice:
        raise RawFormatError(f"key {twice[0]!r} appears twice in one object (with keys {sorted(seen)})")
    return dict(pairs)


def load_dataset(raw_dir: str | os.PathLike, *, outside_root: bool = False) -> Dataset:
    """Parse ``<raw_dir>/dataset.json`` and list every file set's files.

    Args:
        raw_dir: the data set's folder.
        outside_root: accept file set paths outside ``raw_dir`` (absolute, ``../``, another store); by default
            a data set reads only its own folder (config ``raw_paths_outside_root``).

    Raises:
        RawFormatError: the mapping is malformed (a wrong type, an unknown or duplicate key, a value out of its
            allowed set), a path is missing or outside the folder, a domain name is invalid, or a folder holds
            data of a domain that ``dataset.json`` does not list (nothing is skipped silently). The message
            names the file and the key path.
    """
    raw_dir = str(raw_dir)
    cfg_path = os.path.join(_local(raw_dir), "dataset.json")
    if not os.path.isfile(cfg_path):
        raise RawFormatError(f"{cfg_path}: not found (a raw data set is a folder with a dataset.json; see docs/raw-format.md)")
    try:
        with open(cfg_path, encoding="utf-8") as fh:
            spec = json.load(fh, object_pairs_hook=_no_duplicate_keys)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise RawFormatError(f"{cfg_path}: not valid JSON ({e})") from e
    except RawFormatError as e:
        raise RawFormatError(f"{cfg_path}: {e}") from None
    if not isinstance(spec, dict):
        raise RawFormatError(f"{cfg_path}: the top level must be a JSON object with 'domains'")
    domains = spec.get("domains")
    if not isinstance(domains, dict) or not domains:
        raise RawFormatError(f"{cfg_path}: 'domains' must be a non-empty object")
    _check_keys(spec, TOP_KEYS, cfg_path)
    if not isinstance(spec.get("name", ""), str):
        raise RawFormatError(f"{cfg_path}: name: expected a string, got {spec['name']!r}")
    if not isinstance(spec.get("extras", {}), dict):
        raise RawFormatError(f"{cfg_path}: extras: expected an object such as {{\"user_cohorts\": \"cohorts.csv\"}}")
    file_sets: list[FileSet] = []
    for d, dspec in domains.items():
        if not DOMAIN_RE.fullmatch(d):
            raise RawFormatError(f"{cfg_path}: domain name {d!r} must match [a-z0-9_]+")
        if not isinstance(dspec, dict) or "interactions" not in dspec or "items" not in dspec:
            raise RawFormatError(f"{cfg_path}: domains.{d} needs 'interactions' and 'items'")
        _check_keys(dspec, DOMAIN_KEYS, f"{cfg_path}: domains.{d}")
        for kind in ("interactions", "items"):
            file_sets.append(_file_set(kind, d, dspec[kind], raw_dir, f"{cfg_path}: domains.{d}.{kind}", outside_root))
    if spec.get("identity_map"):
        file_sets.append(_file_set("identity_map", None, spec["identity_map"], raw_dir, f"{cfg_path}: identity_map",
                                   outside_root))
    _check_unlisted_domains(raw_dir, set(domains), file_sets, cfg_path)
    dims: dict[str, tuple[int, str]] = {}
    for fs in file_sets:  # one modality is one input of the model: one dimension in every domain
        for col, (dim, modality) in fs.vectors.items():
            seen = dims.setdefault(modality, (dim, f"domains.{fs.domain}.items.vectors.{col}"))
            if seen[0] != dim:
                raise RawFormatError(f"{cfg_path}: domains.{fs.domain}.items.vectors.{col}.dim: {dim}, but {seen[1]} "
                                     f"declares modality {modality!r} with dim {seen[0]}")
    ds = Dataset(
        name=spec.get("name") or os.path.basename(os.path.abspath(raw_dir)),
        root=raw_dir,
        domains=tuple(domains),
        file_sets=tuple(file_sets),
        extras=dict(spec.get("extras", {})),
    )
    log.info(
        "dataset %s: domains %s, %d file(s)",
        ds.name,
        list(ds.domains),
        sum(len(fs.files) for fs in ds.file_sets),
    )
    return ds


def _check_unlisted_domains(raw_dir: str, listed: set[str], file_sets: list[FileSet], cfg_path: str) -> None:
    """A top-level folder with data files that no file set reads is an unknown domain: an error."""
    if not _is_local(raw_dir):
        return
    used = [Path(f).resolve() for fs in file_sets for f in fs.files]
    for child in sorted(Path(_local(raw_dir)).iterdir()):
        if not child.is_dir() or child.name.startswith((".", "_")) or child.name in listed:
            continue
        data = [f for f in child.rglob("*") if f.is_file() and f.suffix.lower() in {e for v in FORMATS.values() for e in v}]
        data = [f for f in data if f.resolve() not in used]
        if data:
            raise RawFormatError(
                f"{cfg_path}: folder {child} holds {len(data)} data file(s) (e.g. {data[0].name}) of domain "
                f"{child.name!r}, which dataset.json does not list (listed: {sorted(listed)}); add it or move it away"
            )
