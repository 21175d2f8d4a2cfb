"""Pseudonymous user ids: HMAC-SHA256 of the raw (or global) user id with the lake's key, and the key's fingerprint.

The key is data of a function, never of a query. Spark computes the hash in a pandas UDF that carries the key in
its closure, so plans (``explain``), the Spark UI and event logs show the UDF's name only; a SQL expression would
hold the key, or its HMAC pads, as literals that Spark prints. The lake keeps the key's fingerprint (a one-way
HMAC of a fixed label) as a property of ``silver.interactions``, so a run with another key refuses to mix
pseudonyms of two keys in one lake.
"""

import hashlib
import hmac
import unicodedata
from typing import Iterable

from crossrec.io.config import ConfigError

FINGERPRINT_PROPERTY = "crossrec.pseudonym_key_fingerprint"
_FINGERPRINT_LABEL = b"crossrec pseudonym key fingerprint v1"


class KeyMismatchError(ConfigError):
    """The configured key is not the one the lake's pseudonyms were made with (a configuration error: exit 2)."""


def pseudonym(user_id: str, key: bytes) -> str:
    """The id crossrec stores for ``user_id``: ``hmac.new(key, NFC(user_id).encode(), sha256).hexdigest()`` (NFC:
    one person's id written with composed or decomposed accents is one id)."""
    return hmac.new(key, unicodedata.normalize("NFC", user_id).encode("utf-8"), hashlib.sha256).hexdigest()


def pseudonyms(user_ids: Iterable[str | None], key: bytes) -> list[str | None]:
    """:func:`pseudonym` of every id (None stays None), with the keyed state computed once and each distinct id
    hashed once (a user's events come in runs: a batch of a log holds each id many times)."""
    base = hmac.new(key, digestmod=hashlib.sha256)
    done: dict[str, str] = {}
    out: list[str | None] = []
    for u in user_ids:
        if u is None:
            out.append(None)
            continue
        p = done.get(u)
        if p is None:
            h = base.copy()
            h.update(unicodedata.normalize("NFC", u).encode("utf-8"))
            p = done[u] = h.hexdigest()
        out.append(p)
    return out


def fingerprint(key: bytes) -> str:
    """A short one-way fingerprint of the key (tells keys apart, reveals nothing of them)."""
    return hmac.new(key, _FINGERPRINT_LABEL, hashlib.sha256).hexdigest()[:16]


def check_fingerprint(stored: str | None, key: bytes, where: str) -> None:
    """Raise :class:`KeyMismatchError` when ``stored`` (the lake's fingerprint, None = none yet) is another key's."""
    if stored is not None and stored != fingerprint(key):
        raise KeyMismatchError(
            f"{where} holds pseudonyms made with another key (fingerprint {stored}; the configured key's is "
            f"{fingerprint(key)}): configure the lake's key, or write to a new lake")


def check_lake_key(spark, path: str, key: bytes) -> bool:
    """Refuse ``key`` when the table at ``path`` (``silver.interactions``) records another key's fingerprint;
    True when it records none yet (then :func:`record_lake_key` after the write)."""
    from crossrec.io.delta import table_exists, table_properties

    stored = table_properties(spark, path).get(FINGERPRINT_PROPERTY) if table_exists(spark, path) else None
    check_fingerprint(stored, key, path)
    return stored is None


def record_lake_key(spark, path: str, key: bytes) -> None:
    """Store the key's fingerprint as a property of the table at ``path`` (one commit)."""
    from crossrec.io.delta import set_table_properties

    set_table_properties(spark, path, {FINGERPRINT_PROPERTY: fingerprint(key)})


def pseudonym_column(key: bytes, column):
    """A Spark column of :func:`pseudonym` over the string ``column`` (null stays null), computed on the executors
    by a pandas UDF named ``pseudonym``: no key material in the plan."""
    import pandas as pd
    from pyspark.sql.functions import pandas_udf

    @pandas_udf("string")  # (this module evaluates annotations: pandas_udf reads the Series hints)
    def pseudonym(values: pd.Series) -> pd.Series:  # noqa: F811 (the plan shows this name)
        return pd.Series(pseudonyms((None if v is None or v != v else v for v in values), key), dtype=object)

    return pseudonym(column)


__all__ = ["pseudonym", "pseudonyms", "fingerprint", "check_fingerprint", "check_lake_key", "record_lake_key",
           "pseudonym_column", "KeyMismatchError",
           "FINGERPRINT_PROPERTY"]
