"""The ``editflow`` command line: one entry point for every component."""
