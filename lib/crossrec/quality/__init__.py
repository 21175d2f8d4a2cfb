"""Table contracts and Great Expectations validation."""
