"""Offline evaluation: full-ranking metrics over all items of a target domain."""
