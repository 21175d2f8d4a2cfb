"""Nightly scoring: top-K items of every domain for every user (``topk``: PyTorch; ``stage``: the Spark stage;
``publish``: checking a run and pointing readers at it)."""
