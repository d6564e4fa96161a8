"""`python -m runtime ...` is the `lambent` command (used by `lambent up` to start its roles)."""

from .cli import main

main()
