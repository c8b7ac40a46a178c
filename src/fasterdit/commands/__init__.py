"""Command-line subcommands: one module each (see fasterdit.cli)."""
