"""``python -m modelfleet`` runs the CLI."""

from modelfleet.cli.main import main

main()
