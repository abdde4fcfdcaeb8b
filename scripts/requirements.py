"""Print the requirements of pyproject.toml (base + the named extras), one per line."""

import sys

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: the TOML reader pip ships, present in every venv
    from pip._vendor import tomli as tomllib

with open(sys.argv[1], "rb") as f:
    project = tomllib.load(f)["project"]
reqs = list(project["dependencies"])
for extra in sys.argv[2:]:
    reqs += project.get("optional-dependencies", {}).get(extra, [])
print("\n".join(dict.fromkeys(reqs)))
