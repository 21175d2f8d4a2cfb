"""crossrec: cross-domain batch recommendation on Spark, Delta Lake and Ray Train."""

__version__ = "0.1.0"
