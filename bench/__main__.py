"""``python -m bench``: the ``kdbench`` command where its script is not on the ``PATH``.

It exits with the command's status (0 done, 1 a trial or check failed, 2 bad input), as
``kdbench`` does; :func:`bench.cli.main` returns it, for callers in Python.
"""

import sys

from bench.cli import main

if __name__ == "__main__":
    sys.exit(main())
