"""``python -m weightinit``: the ``weightinit`` command line (see :mod:`weightinit.cli`)."""

from .cli import main

if __name__ == "__main__":
    raise SystemExit(main())
