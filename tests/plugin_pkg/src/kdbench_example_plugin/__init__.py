"""An example third-party kdbench method package (see its pyproject.toml)."""
