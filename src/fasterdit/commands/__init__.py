"""Command-line subcommands: one module each (see fasterdit.cli).

Why each command's ``run`` imports what it needs inside the function: ``fasterdit --help`` builds every
command's parser, so it imports every module here; importing torch and the library at their tops would
make ``--help`` (and a typo'd flag) take ~3.5 s instead of ~0.1 s. This is the one place the package
imports its own modules lazily; library modules import at their tops.
"""
