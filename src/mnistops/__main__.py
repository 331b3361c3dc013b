"""`python -m mnistops` = the `mnistops` command."""

from mnistops.cli import main

main()
