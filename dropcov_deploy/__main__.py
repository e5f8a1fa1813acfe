"""`python -m dropcov_deploy` runs the CLI."""

from dropcov_deploy.cli import main

main()
