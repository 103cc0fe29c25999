"""`python -m attnviz.cli …` is the `attnviz` command."""
from attnviz.cli import main

main()
