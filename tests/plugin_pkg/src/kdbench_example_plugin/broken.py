"""A method module whose dependency is not installed: importing it fails."""

import kdbench_example_missing_dependency  # noqa: F401
