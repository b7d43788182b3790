"""`python -m lmlab.cli …` (what torchrun launches for multi-process training)."""

from lmlab.cli.entry import main

main()
