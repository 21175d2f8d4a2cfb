"""Spark MLlib ALS (implicit feedback) as a baseline behind the shared :class:`Recommender` interface.

Fitted on the user x item matrix of all domains (so a user's factors carry every domain); scores are the
dot products of user and item factors, restricted to the target domain's items.
"""
from __future__ import annotations

import logging
import time

import numpy as np

from crossrec.model.baselines import InteractionData, Recommender

log = logging.getLogger(__name__)


class SparkALS(Recommender):
    """Implicit ALS (Hu, Koren, Volinsky 2008) from ``pyspark.ml.recommendation.ALS``."""

    name = "als"

    def __init__(self, spark, rank: int = 64, reg: float = 0.1, alpha: float = 10.0, max_iter: int = 10, seed: int = 42):
        self.spark, self.rank, self.reg, self.alpha, self.max_iter, self.seed = spark, rank, reg, alpha, max_iter, seed
        self.user_factors: np.ndarray | None = None
        self.item_factors: np.ndarray | None = None
        self._data: InteractionData | None = None

    def fit(self, data: InteractionData) -> "SparkALS":
        import pandas as pd
        from pyspark.ml.recommendation import ALS

        t0 = time.time()
        pairs = pd.DataFrame({"user": data.user.astype(np.int32), "item": data.item.astype(np.int32)})
        pairs = pairs.groupby(["user", "item"]).size().reset_index(name="rating").astype({"rating": np.float32})
        df = self.spark.createDataFrame(pairs, "user int, item int, rating float")
        als = ALS(rank=self.rank, regParam=self.reg, alpha=self.alpha, maxIter=self.max_iter, implicitPrefs=True,
                  userCol="user", itemCol="item", ratingCol="rating", seed=self.seed, coldStartStrategy="nan")
        model = als.fit(df)
        self.user_factors = _factors(model.userFactors, data.n_users, self.rank)
        self.item_factors = _factors(model.itemFactors, data.n_items + 1, self.rank)
        self._data = data
        log.info("ALS rank %d fitted on %d pairs in %.1fs", self.rank, len(pairs), time.time() - t0)
        return self

    def full_sort_predict(self, users: np.ndarray, domain: int) -> np.ndarray:
        assert self.user_factors is not None and self._data is not None, "fit() first"
        items = self._data.domain_items[domain]
        return (self.user_factors[users] @ self.item_factors[items].T).astype(np.float32)  # (B, n_d)


def _factors(frame, n: int, rank: int) -> np.ndarray:
    """Dense (n, rank) factors from an ALS factor frame (ids never seen in training stay zero)."""
    pdf = frame.toPandas()  # one row per user / item: small next to the interactions
    out = np.zeros((n, rank), dtype=np.float32)
    if len(pdf):
        out[pdf["id"].values] = np.stack(pdf["features"].values).astype(np.float32)
    return out
