"""The pretrained language model that reads item text."""
