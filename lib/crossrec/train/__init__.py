"""Distributed training of the cross-domain Transformer on Ray Train (gold tables -> model artifact)."""
