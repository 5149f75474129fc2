"""``python -m mixcore`` runs the CLI."""

from mixcore.cli import run

run()
