"""Spark-free readers of the lakehouse, for services, notebooks and the CLI (``deltalake`` package, no JVM)."""
from __future__ import annotations

import datetime
import os
from dataclasses import dataclass

from crossrec import columns as C
from crossrec.quality.contracts import all_contracts


@dataclass(frozen=True)
class TableInfo:
    """One Delta table of the lake: its name, location, newest version and row count."""

    table: str
    path: str
    version: int
    rows: int


def table_path(lake_root: str, table: str) -> str:
    layer, _, name = table.partition(".")
    return f"{lake_root.rstrip('/')}/{layer}/{name}"


def arrow_table(source, version: int | None = None, columns: list[str] | None = None, filters: list | None = None):
    """A Delta table (a path or a ``deltalake.DeltaTable``; optionally at ``version``) as a pyarrow Table.

    ``filters``: ``(column, op, value)`` triples, op a comparison (``=``, ``<``, ``>=``...) or ``in`` (pyarrow's
    form). Read through deltalake's query engine, which applies deletion vectors (see the contract key
    ``deletion_vectors``; deltalake's pyarrow reader refuses such tables). Its pyarrow reader is not used at all: its
    scan threads call back into Python and, still running when the interpreter exits, abort it ("terminate called
    without an active exception") after the work is done, in a few percent of short processes under load.
    """
    import pyarrow as pa
    from deltalake import DeltaTable

    dt_ = source if isinstance(source, DeltaTable) else DeltaTable(source, version=version)
    names = ", ".join(_sql_name(c) for c in columns) if columns else "*"
    where = " AND ".join(_sql_filter(*f) for f in filters or [])
    table = _query(dt_, f"SELECT {names} FROM t" + (f" WHERE {where}" if where else ""))
    schema = dt_.schema().to_arrow() if hasattr(dt_.schema(), "to_arrow") else None
    if schema is not None:  # the engine's view types back to the table's own
        want = pa.schema([pa.schema(schema).field(n) for n in table.column_names])
        table = table.cast(want)
    return table


def _query(dt_, sql: str):
    """``sql`` over the ``deltalake.DeltaTable`` registered as ``t``, as a pyarrow Table."""
    import pyarrow as pa
    from deltalake import QueryBuilder

    return pa.table(QueryBuilder().register("t", dt_).execute(sql))


def count_rows(dt_) -> int:
    """Rows of a ``deltalake.DeltaTable`` (deletion vectors applied)."""
    return int(_query(dt_, "SELECT count(*) AS n FROM t").column("n")[0].as_py())


def _sql_name(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def sql_value(v) -> str:
    """A literal for deltalake's SQL (strings quoted, quotes doubled; numbers, dates): values never become SQL."""
    if isinstance(v, str):
        return "'" + v.replace("'", "''") + "'"
    if isinstance(v, (datetime.date, datetime.datetime)):
        return f"'{v.isoformat()}'"
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise ValueError(f"filter value {v!r}: only strings, numbers and dates")
    return repr(v)


def _sql_filter(column: str, op: str, value) -> str:
    if op in ("=", "!=", "<", "<=", ">", ">="):
        return f"{_sql_name(column)} {op} {sql_value(value)}"
    if op == "in":
        return f"{_sql_name(column)} IN ({', '.join(sql_value(v) for v in value)})"
    raise ValueError(f"filter op {op!r}: only comparisons and 'in'")


def read_table(lake_root: str, table: str, version: int | None = None, columns: list[str] | None = None):
    """A table (optionally at ``version``) as a pandas DataFrame."""
    return arrow_table(table_path(lake_root, table), version, columns).to_pandas()


def list_tables(lake_root: str) -> list[TableInfo]:
    """Every contract table that exists under ``lake_root``, with version and row count."""
    from deltalake import DeltaTable

    out = []
    for c in all_contracts():
        path = table_path(lake_root, c.table)
        if "://" not in path and not os.path.isdir(os.path.join(path, "_delta_log")):
            continue
        try:
            dt = DeltaTable(path)
        except Exception:  # deltalake raises TableNotFoundError for remote paths without a log
            continue
        out.append(TableInfo(c.table, path, dt.version(), count_rows(dt)))
    return out


# ------------------------------------------------------------------------------ recommendations (services)
PUBLISHED_PREFIX = "crossrec.published."


def published_run(lake_root: str) -> dict | None:
    """What readers should read: ``{version, run_date, model_version, k, published_at}`` of the newest
    *published* run of gold.recommendations (set by ``crossrec score``/``crossrec publish`` only after the
    output checks passed), or None when nothing was published yet."""
    from deltalake import DeltaTable
    from deltalake.exceptions import TableNotFoundError

    try:
        conf = DeltaTable(table_path(lake_root, "gold.recommendations")).metadata().configuration
    except TableNotFoundError:
        return None
    pub = {k[len(PUBLISHED_PREFIX):]: v for k, v in (conf or {}).items() if k.startswith(PUBLISHED_PREFIX)}
    if "version" not in pub:
        return None
    pub["version"] = int(pub["version"])
    pub["k"] = int(pub.get("k", 0))
    return pub


def read_recommendations(lake_root: str, user_id: str | None = None, domain: str | None = None,
                         run_date: str | None = None, version: int | None = None):
    """Recommendations as a pandas DataFrame (``rank`` order), without Spark or a JVM.

    Default: the published run (:func:`published_run`). ``run_date`` / ``version`` read another run (an
    unpublished one included: the caller asked for it). ``user_id`` is the pseudonymised id of the tables
    (see :func:`pseudonymize`); ``domain`` restricts to one domain. Raises LookupError when nothing is there.
    """
    import datetime as dt

    from deltalake import DeltaTable

    pub = published_run(lake_root)
    if run_date is None and version is None:
        if pub is None:
            raise LookupError(f"no published recommendations under {lake_root}: run `crossrec score` (or `crossrec publish`)")
        run_date, version = pub["run_date"], pub["version"]
    dtable = DeltaTable(table_path(lake_root, "gold.recommendations"), version=version)
    filters = []
    if run_date is not None:
        filters.append((C.RUN_DATE, "=", dt.date.fromisoformat(str(run_date))))
    if domain is not None:
        filters.append((C.DOMAIN, "=", domain))
    if user_id is not None:
        filters.append((C.USER_ID, "=", user_id))
    df = arrow_table(dtable, filters=filters).to_pandas()
    if run_date is None and not df.empty:  # a version without a date: its newest run
        df = df[df.run_date == df.run_date.max()]
    return df.sort_values([C.USER_ID, C.DOMAIN, C.RANK]).reset_index(drop=True)


def pseudonymize(user_id: str, key: bytes, lake_root: str | None = None) -> str:
    """The id ``crossrec clean`` stores for raw/global user id ``user_id`` (HMAC-SHA256 hex with the lake's key).

    With ``lake_root``, the key must be the lake's (the fingerprint ``clean`` stored on silver.interactions):
    another key would give an id that matches nobody. Raises KeyMismatchError (a ConfigError) when it is not.
    """
    from crossrec.data.pseudonym import FINGERPRINT_PROPERTY, check_fingerprint, pseudonym

    if lake_root is not None:
        from deltalake import DeltaTable
        from deltalake.exceptions import TableNotFoundError

        path = table_path(lake_root, "silver.interactions")
        try:
            props = DeltaTable(path).metadata().configuration
        except TableNotFoundError as e:
            raise LookupError(f"no silver.interactions under {lake_root}: not a crossrec lake, or `crossrec clean` "
                              "has not run") from e
        check_fingerprint(props.get(FINGERPRINT_PROPERTY), key, path)
    return pseudonym(user_id, key)


def item_titles(lake_root: str, keys: list[tuple[str, str]] | None = None) -> dict[tuple[str, str], str]:
    """{(domain, item_id): title} from silver.items (all items, or those in ``keys``)."""
    df = read_table(lake_root, "silver.items", columns=[C.DOMAIN, C.ITEM_ID, C.TITLE])
    if keys is not None:
        wanted = set(keys)
        df = df[[k in wanted for k in zip(df.domain, df.item_id)]]
    return {(d, i): t for d, i, t in zip(df.domain, df.item_id, df.title)}


def entity_items(lake_root: str, entities: list[str]):
    """``(domain, item_id)`` pairs (a pandas DataFrame) of the items carrying any of ``entities`` in
    silver.item_entities; an entity is ``type:value`` or a bare value (any type), matched as clean normalises values
    (trimmed, inner whitespace collapsed, lower case). Raises LookupError naming an entity no item carries."""
    import re

    import numpy as np

    from deltalake.exceptions import TableNotFoundError

    try:
        ents = read_table(lake_root, "silver.item_entities", columns=[C.DOMAIN, C.ITEM_ID, C.ENTITY, C.VALUE])
    except TableNotFoundError as e:
        raise LookupError(f"no silver.item_entities under {lake_root}: the data set declares no entities, or run "
                          "`crossrec clean`") from e
    keep = np.zeros(len(ents), dtype=bool)
    for wanted in entities:
        etype, sep, value = wanted.partition(":")
        norm = lambda v: re.sub(r"\s+", " ", v.strip()).lower()  # noqa: E731
        hit = (ents.entity == f"{etype.strip().lower()}:{norm(value)}") if sep else (ents.value == norm(wanted))
        if not hit.any():
            close = sorted(ents.entity[ents.entity.str.contains(re.escape(norm(value if sep else wanted)))].unique())[:5]
            raise LookupError(f"no item carries entity {wanted!r}" + (f"; close: {close}" if close else ""))
        keep |= hit.values
    return ents.loc[keep, [C.DOMAIN, C.ITEM_ID]].drop_duplicates()


def nearest_items(lake_root: str, text: str, domain: str | None = None, n: int = 10, encoder=None,
                  entities: list[str] | None = None, entity_boost: float | None = None):
    """Items whose text-encoder vector (gold.item_embeddings) is closest (cosine) to ``text`` embedded by the
    same language model: a free-text interest -> items, cold-start friendly. pandas DataFrame
    ``domain, item_id, title, similarity`` (best first).

    ``entities`` (see :func:`entity_items`): only items that carry one of them ("books by <author>"), or, with
    ``entity_boost``, every item with that much added to the similarity of those that do."""
    import numpy as np

    from crossrec.text.encoder import TextEncoder

    from deltalake.exceptions import TableNotFoundError

    try:
        emb = read_table(lake_root, "gold.item_embeddings", columns=[C.DOMAIN, C.ITEM_ID, C.EMBEDDING])
    except TableNotFoundError as e:
        raise LookupError(f"no gold.item_embeddings under {lake_root}: run `crossrec features` first") from e
    if domain is not None:
        known = sorted(emb.domain.unique())
        if domain not in known:
            raise LookupError(f"unknown domain {domain!r}; the lake has {known}")
        emb = emb[emb.domain == domain]
    carries = None
    if entities:
        linked = entity_items(lake_root, entities)
        carries = emb[[C.DOMAIN, C.ITEM_ID]].merge(linked.assign(_e=True), how="left")._e.fillna(False).values.astype(bool)
        if entity_boost is None:
            emb, carries = emb[carries], None
    if emb.empty:
        raise LookupError(f"no item of gold.item_embeddings under {lake_root} matches"
                          + (f" entities {entities}" + (f" in {domain}" if domain else "") if entities else ": run `crossrec features`"))
    q = (encoder or TextEncoder()).encode([text])[0]  # (384,) L2-normalised
    mat = np.stack(emb.embedding.values).astype(np.float32)  # (n_items, 384), L2-normalised
    sim = mat @ q
    if carries is not None:
        sim = sim + float(entity_boost) * carries
    top = np.argsort(-sim, kind="stable")[:n]
    out = emb.iloc[top][[C.DOMAIN, C.ITEM_ID]].reset_index(drop=True)
    out["similarity"] = sim[top]
    titles = item_titles(lake_root, list(zip(out.domain, out.item_id)))
    out.insert(2, C.TITLE, [titles.get(k, "") for k in zip(out.domain, out.item_id)])
    return out
