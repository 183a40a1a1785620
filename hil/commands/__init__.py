"""Subcommands of the ``hil`` CLI, one module each."""
