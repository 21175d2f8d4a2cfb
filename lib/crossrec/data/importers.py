"""Importers: public research data sets -> crossrec's raw input format (docs/raw-format.md).

Both write one folder per domain (``<domain>/interactions.csv``, ``<domain>/items.csv``), a ``dataset.json``
and a ``manifest.json`` (row counts, what was skipped and why), and return the manifest.

* :func:`import_amazon_food_kitchen` -- the Amazon Food + Kitchen cross-domain set (LLMCDSR), which has an
  order but no timestamps; see ``SOURCE.md`` next to the data.
* :func:`import_recbole_atomic` -- RecBole atomic files (``<name>.inter`` + ``<name>.item``).

Values the pipeline can judge itself (an unknown item, an unparseable timestamp) are written through so that
the clean stage quarantines them; values an importer cannot even read (a non-integer item index) raise.

Run::

    crossrec import amazon-food-kitchen SRC_DIR OUT_DIR
    crossrec import recbole SRC_DIR OUT_DIR --domain COLUMN_OR_NAME
"""

from __future__ import annotations

import bisect
import csv
import json
import logging
import re
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import pandas as pd

from crossrec.data.rawformat import DOMAIN_RE as _DOMAIN_RE

log = logging.getLogger(__name__)

INTERACTION_COLUMNS = ("user_id", "item_id", "event_ts", "event_type")
SEQUENCE_START_S = 1_420_070_400  # 2015-01-01T00:00:00Z: time of a user's first item when only order is known
SEQUENCE_STEP_S = 3600  # one hour between a user's consecutive items
UNKNOWN_ITEM_PREFIX = "idx:"
FOOD_KITCHEN_ITEMS = "items.tsv"
FOOD_KITCHEN_FILES = (  # (file, cohort); user ids become "<cohort>_<local id>"
    ("train_A.txt", "A"),
    ("train_B.txt", "B"),
    ("train_overlap.txt", "overlap"),
    ("valid.txt", "valid"),
    ("test.txt", "test"),
)
FOOD_KITCHEN_EVENT_TYPE = "review"
_INDEX_RE = re.compile(r"[0-9]+")


# ----------------------------------------------------------------------------------------------------
# Shared writers.


def _write_csv(path: Path, header: Sequence[str], rows: Iterable[Sequence[Any]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(header)
        writer.writerows(rows)


def _write_json(path: Path, obj: Any) -> None:
    path.write_text(json.dumps(obj, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def _check_domain(name: str, where: str) -> str:
    if not _DOMAIN_RE.fullmatch(name):
        raise ValueError(f"{where}: domain name {name!r} is not lower-case [a-z0-9_]+")
    return name


def _domain_entry(domain: str, timestamp: str, *, weight: bool, default_event_type: str,
                  item_columns: dict[str, str], text_columns: list[str],
                  attribute_columns: list[str]) -> dict[str, Any]:
    columns = {c: c for c in INTERACTION_COLUMNS + (("weight",) if weight else ())}
    items: dict[str, Any] = {"path": f"{domain}/items.csv", "format": "csv", "columns": item_columns,
                             "text_columns": text_columns}
    if attribute_columns:
        items["attribute_columns"] = attribute_columns
    return {
        "interactions": {"path": f"{domain}/interactions.csv", "format": "csv",
                         "options": {"delimiter": ",", "encoding": "utf-8"}, "columns": columns,
                         "timestamp": timestamp, "default_event_type": default_event_type},
        "items": items,
    }


def _require_files(paths: Iterable[Path], what: str) -> None:
    for path in paths:
        if not path.is_file():
            raise FileNotFoundError(f"{what} source file missing: {path}")


# ----------------------------------------------------------------------------------------------------
# Amazon Food + Kitchen.


def _read_food_kitchen_items(path: Path) -> tuple[dict[int, tuple[str, str, str]], list[str]]:
    """``item_index -> (domain, asin, title)`` and the domains in order of first appearance."""
    items: dict[int, tuple[str, str, str]] = {}
    domains: list[str] = []
    with open(path, encoding="utf-8", newline="") as f:
        header = f.readline().rstrip("\r\n").split("\t")
        if header != ["item_index", "domain", "asin", "title"]:
            raise ValueError(f"{path}: header must be item_index, domain, asin, title; got {header}")
        for lineno, line in enumerate(f, start=2):
            parts = line.rstrip("\r\n").split("\t", 3)
            if len(parts) != 4 or not _INDEX_RE.fullmatch(parts[0]) or not parts[2]:
                raise ValueError(f"{path}: line {lineno}: expected item_index<TAB>domain<TAB>asin<TAB>title, "
                                 f"got {line[:120]!r}")
            index, domain, asin, title = int(parts[0]), parts[1], parts[2], parts[3]
            if index in items:
                raise ValueError(f"{path}: line {lineno}: item_index {index} appears twice")
            if domain not in domains:
                domains.append(_check_domain(domain, f"{path}: line {lineno}"))
            items[index] = (domain, asin, title)
    return items, domains


def _domain_of_unknown(index: int, known: list[int], items: dict[int, tuple[str, str, str]]) -> str:
    """Domain of an index missing from items.tsv: that of the nearest known index below it (indexes are
    contiguous blocks per domain), or of the first index when none is below."""
    pos = bisect.bisect_left(known, index)
    return items[known[max(pos - 1, 0)]][0]


def import_amazon_food_kitchen(src_dir: str | Path, out_dir: str | Path) -> dict:
    """Convert the Amazon Food + Kitchen files in ``src_dir`` into a raw data set in ``out_dir``.

    Writes ``<domain>/items.csv`` (``item_id`` = ASIN, ``title``) for each domain of ``items.tsv``,
    ``<domain>/interactions.csv`` (``user_id, item_id, event_ts, event_type``), ``cohorts.csv``
    (``user_id, cohort``), ``dataset.json`` (with ``"extras": {"user_cohorts": "cohorts.csv"}``) and
    ``manifest.json``. User ids are ``<cohort>_<local id>`` (cohorts A, B, overlap, valid, test), since the
    files number their users independently. The k-th item (from 0) of a user's line, whatever its domain,
    gets ``event_ts`` = 2015-01-01T00:00:00Z + k hours, so the interleaving of the domains is kept;
    ``event_type`` is ``review``. Empty tokens (``1,2,,3``, a trailing comma) are skipped and counted, as are
    users whose line has no item (they stay in ``cohorts.csv``); an index missing from ``items.tsv`` is
    written as item ``idx:<index>`` (in the domain of the nearest known index below it) and counted.

    Raises FileNotFoundError naming a missing source file, and ValueError naming the file, line and token
    of an item index that is not a non-negative integer. Nothing is written when it raises.
    """
    src, out = Path(src_dir), Path(out_dir)
    _require_files([src / FOOD_KITCHEN_ITEMS] + [src / name for name, _ in FOOD_KITCHEN_FILES],
                   "Amazon Food+Kitchen")
    items, domains = _read_food_kitchen_items(src / FOOD_KITCHEN_ITEMS)
    known = sorted(items)

    rows: dict[str, list[tuple[str, str, int, str]]] = {d: [] for d in domains}
    cohorts: list[tuple[str, str]] = []
    files: dict[str, dict[str, Any]] = {}
    for name, cohort in FOOD_KITCHEN_FILES:
        path = src / name
        stats = {"cohort": cohort, "users": 0, "interactions": 0, "empty_tokens": 0, "blank_lines": 0,
                 "users_without_items": 0, "unknown_items": 0, "per_domain": {d: 0 for d in domains}}
        seen: set[str] = set()
        with open(path, encoding="utf-8", newline="") as f:
            for lineno, line in enumerate(f, start=1):
                line = line.rstrip("\r\n")
                if not line.strip():
                    stats["blank_lines"] += 1
                    continue
                local, tab, sequence = line.partition("\t")
                local = local.strip()
                if not tab or not local:
                    raise ValueError(f"{path}: line {lineno}: expected user_id<TAB>item,item,...; got {line[:120]!r}")
                user = f"{cohort}_{local}"
                if user in seen:
                    raise ValueError(f"{path}: line {lineno}: user {local!r} appears on two lines")
                seen.add(user)
                cohorts.append((user, cohort))
                position = 0
                for token in sequence.split(",") if sequence.strip() else []:
                    token = token.strip()
                    if not token:
                        stats["empty_tokens"] += 1
                        continue
                    if not _INDEX_RE.fullmatch(token):
                        raise ValueError(f"{path}: line {lineno}: item index {token!r} is not a non-negative integer")
                    index = int(token)
                    if index in items:
                        domain, item_id = items[index][0], items[index][1]
                    else:
                        domain, item_id = _domain_of_unknown(index, known, items), f"{UNKNOWN_ITEM_PREFIX}{index}"
                        stats["unknown_items"] += 1
                    rows[domain].append((user, item_id, SEQUENCE_START_S + position * SEQUENCE_STEP_S,
                                         FOOD_KITCHEN_EVENT_TYPE))
                    stats["per_domain"][domain] += 1
                    position += 1
                stats["users"] += 1
                stats["users_without_items"] += position == 0
                stats["interactions"] += position
        files[name] = stats
        log.info("%s: %d users, %d interactions, %d empty tokens, %d unknown items", name, stats["users"],
                 stats["interactions"], stats["empty_tokens"], stats["unknown_items"])

    out.mkdir(parents=True, exist_ok=True)
    dataset_domains: dict[str, Any] = {}
    domains_manifest: dict[str, Any] = {}
    for domain in domains:
        catalog = [(asin, title) for index, (d, asin, title) in sorted(items.items()) if d == domain]
        _write_csv(out / domain / "items.csv", ("item_id", "title"), catalog)
        _write_csv(out / domain / "interactions.csv", INTERACTION_COLUMNS, rows[domain])
        dataset_domains[domain] = _domain_entry(
            domain, "epoch_s", weight=False, default_event_type=FOOD_KITCHEN_EVENT_TYPE,
            item_columns={"item_id": "item_id", "title": "title"}, text_columns=["title"], attribute_columns=[])
        domains_manifest[domain] = {"items": len(catalog), "interactions": len(rows[domain]),
                                    "users": len({r[0] for r in rows[domain]})}
    _write_csv(out / "cohorts.csv", ("user_id", "cohort"), cohorts)
    _write_json(out / "dataset.json", {"name": "amazon-food-kitchen", "domains": dataset_domains,
                                       "extras": {"user_cohorts": "cohorts.csv"}})
    manifest = {
        "source": "amazon-food-kitchen",
        "files": files,
        "domains": domains_manifest,
        "interactions": sum(s["interactions"] for s in files.values()),
        "empty_tokens": sum(s["empty_tokens"] for s in files.values()),
        "unknown_items": sum(s["unknown_items"] for s in files.values()),
        "cohorts": {cohort: files[name]["users"] for name, cohort in FOOD_KITCHEN_FILES},
        "timestamps": {"start_epoch_s": SEQUENCE_START_S, "step_s": SEQUENCE_STEP_S},
    }
    _write_json(out / "manifest.json", manifest)
    log.info("wrote %d interactions of %d users to %s", manifest["interactions"], len(cohorts), out)
    return manifest


# ----------------------------------------------------------------------------------------------------
# RecBole atomic files.


def _read_atomic(path: Path) -> pd.DataFrame:
    """A RecBole atomic file as strings, columns named without their ``:type`` suffix."""
    frame = pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False, na_filter=False,
                        quoting=csv.QUOTE_NONE, encoding="utf-8")
    names = [c.split(":", 1)[0] for c in frame.columns]
    if len(set(names)) != len(names):
        raise ValueError(f"{path}: repeated field names in header {list(frame.columns)}")
    frame.columns = names
    return frame.fillna("")


def _require_fields(frame: pd.DataFrame, path: Path, fields: Sequence[str]) -> None:
    missing = [f for f in fields if f not in frame.columns]
    if missing:
        raise ValueError(f"{path}: missing field(s) {missing}; header has {list(frame.columns)}")


def _normalise_domain(value: str, where: str) -> str:
    name = re.sub(r"[^a-z0-9_]+", "_", value.strip().lower()).strip("_")
    if not name:
        raise ValueError(f"{where}: domain value {value!r} gives an empty domain name")
    return name


def import_recbole_atomic(src_dir: str | Path, out_dir: str | Path, domain_of: str, *,
                          name: str | None = None) -> dict:
    """Convert RecBole atomic files ``<name>.inter`` and ``<name>.item`` in ``src_dir`` into a raw data set.

    ``domain_of`` is either a field of the ``.item`` file holding each item's domain (values are lower-cased,
    other characters than ``[a-z0-9_]`` become ``_``) or, when no such field exists, the one domain name of
    all items. ``name`` defaults to the stem of the only ``.inter`` file in ``src_dir``.

    The ``.inter`` file needs ``user_id``, ``item_id`` and ``timestamp`` fields; ``rating``, when present,
    becomes the weight and the event type is then ``rating`` (else ``interaction``). Timestamps are written as
    integer epoch seconds when every parseable one is whole, else as epoch milliseconds; unparseable ones
    are written verbatim and counted. Items of the ``.item`` file keep ``item_id``, ``title`` (text) and
    ``category``/``categories`` (category) when present and every other field as an attribute. With a domain
    field, interactions of items missing from ``.item`` have no domain: they are dropped and counted.
    """
    src, out = Path(src_dir), Path(out_dir)
    if name is None:
        inter_files = sorted(src.glob("*.inter"))
        if len(inter_files) != 1:
            raise FileNotFoundError(f"expected exactly one .inter file in {src} (or pass name=), found "
                                    f"{[p.name for p in inter_files]}")
        name = inter_files[0].stem
    inter_path, item_path = src / f"{name}.inter", src / f"{name}.item"
    _require_files([inter_path, item_path], "RecBole")
    inter = _read_atomic(inter_path)
    item = _read_atomic(item_path)
    _require_fields(inter, inter_path, ("user_id", "item_id", "timestamp"))
    _require_fields(item, item_path, ("item_id",))
    if item["item_id"].duplicated().any():
        raise ValueError(f"{item_path}: item_id {item['item_id'][item['item_id'].duplicated()].iloc[0]!r} "
                         "appears twice")

    if domain_of in item.columns:
        item_domain = item[domain_of].map(lambda v: _normalise_domain(v, f"{item_path}: field {domain_of}"))
        fixed_domain = None
    else:
        fixed_domain = _check_domain(domain_of, "domain_of (no such field in .item)")
        item_domain = pd.Series(fixed_domain, index=item.index)
    domain_by_item = dict(zip(item["item_id"], item_domain))
    inter_domain = inter["item_id"].map(domain_by_item)
    dropped = 0
    if fixed_domain is not None:
        inter_domain = inter_domain.fillna(fixed_domain)
    else:
        unknown = inter_domain.isna()
        dropped = int(unknown.sum())
        if dropped:
            log.warning("%s: dropped %d interactions with items missing from %s", inter_path, dropped, item_path)
        inter, inter_domain = inter[~unknown], inter_domain[~unknown]

    seconds = pd.to_numeric(inter["timestamp"].str.strip(), errors="coerce").to_numpy(dtype=np.float64)
    parsed = np.isfinite(seconds)
    whole = bool(np.all(seconds[parsed] == np.floor(seconds[parsed])))
    unit = "epoch_s" if whole else "epoch_ms"
    scaled = seconds if whole else seconds * 1000.0
    event_ts = inter["timestamp"].to_numpy(dtype=object).copy()  # unparseable ones verbatim
    event_ts[parsed] = np.rint(scaled[parsed]).astype(np.int64).astype(str)
    has_rating = "rating" in inter.columns
    out_inter = pd.DataFrame({"user_id": inter["user_id"], "item_id": inter["item_id"], "event_ts": event_ts,
                              "event_type": "rating" if has_rating else "interaction"})
    if has_rating:
        out_inter["weight"] = inter["rating"]

    category_field = next((c for c in ("category", "categories") if c in item.columns), None)
    item_columns = {"item_id": "item_id"}
    keep = ["item_id"]
    if "title" in item.columns:
        item_columns["title"] = "title"
        keep.append("title")
    if category_field:
        item_columns["category"] = category_field
        keep.append(category_field)
    attributes = [c for c in item.columns if c not in keep and c != domain_of]

    out.mkdir(parents=True, exist_ok=True)
    dataset_domains: dict[str, Any] = {}
    domains_manifest: dict[str, Any] = {}
    for domain in sorted(set(item_domain) | set(inter_domain)):
        domain_items = item[item_domain == domain][keep + attributes]
        domain_inter = out_inter[(inter_domain == domain).to_numpy()]
        _write_csv(out / domain / "items.csv", list(domain_items.columns), domain_items.itertuples(index=False))
        _write_csv(out / domain / "interactions.csv", list(domain_inter.columns),
                   domain_inter.itertuples(index=False))
        dataset_domains[domain] = _domain_entry(
            domain, unit, weight=has_rating, default_event_type="interaction", item_columns=item_columns,
            text_columns=["title"] if "title" in item.columns else [], attribute_columns=attributes)
        domains_manifest[domain] = {"items": len(domain_items), "interactions": len(domain_inter),
                                    "users": int(domain_inter["user_id"].nunique())}
    _write_json(out / "dataset.json", {"name": name, "domains": dataset_domains})
    manifest = {
        "source": "recbole-atomic",
        "name": name,
        "files": {"inter": inter_path.name, "item": item_path.name},
        "domain_of": {"field": domain_of} if fixed_domain is None else {"domain": fixed_domain},
        "timestamp": unit,
        "domains": domains_manifest,
        "interactions": len(out_inter),
        "dropped_unknown_item": dropped,
        "unparseable_timestamps": int((~parsed).sum()),
    }
    _write_json(out / "manifest.json", manifest)
    log.info("wrote %d interactions in %d domains to %s", len(out_inter), len(domains_manifest), out)
    return manifest
