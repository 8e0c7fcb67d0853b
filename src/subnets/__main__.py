"""``python -m subnets`` runs the command line."""

from subnets.cli import main

main()
