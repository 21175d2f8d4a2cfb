"""Raw data: format, synthetic generator, importers, cleaning transforms."""
