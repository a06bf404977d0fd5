"""``python -m compress ...``: the command line, also as torchrun starts it (``torchrun -m compress ...``)."""

from .cli import main

if __name__ == "__main__":
    main()
