"""The ``anoncam`` command line: run, anonymize, analyze, demo and bench."""
