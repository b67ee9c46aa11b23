"""``python -m musicgend`` runs the CLI."""

from musicgend.cli import main

main()
