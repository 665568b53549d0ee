"""`python -m moonflower` runs the command line."""

from moonflower.cli.main import run

run()
