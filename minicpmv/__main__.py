"""`python -m minicpmv ...` is the same as the `minicpmv` console script."""

from .cli import main

raise SystemExit(main())
