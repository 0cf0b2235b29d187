"""`python -m dept ...`: the same command line as `dept ...` (what torchrun and other launchers call)."""

from dept.cli import main

main()
