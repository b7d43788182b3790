"""`python -m lmlab.cli …` (what torchrun launches for multi-process training)."""

from lmlab.cli.app import main

main()
