"""Spark session, configuration and Delta table I/O."""
