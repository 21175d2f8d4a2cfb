"""Stage entry points: one thin ``main(argv)`` a stage (see each module docstring)."""
