"""Table contracts, one YAML file a table (loaded by ``crossrec.quality.contracts``)."""
