"""`python -m edgeprune ...` (and `torchrun -m edgeprune ...`) is the `edgeprune` command."""
import sys

from .cli.main import main

if __name__ == "__main__":
    sys.exit(main())
