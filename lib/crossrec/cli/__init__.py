"""The ``crossrec`` command."""
