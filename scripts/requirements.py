"""Print the requirements of pyproject.toml (base + the named extras), one per line."""

import sys
import tomllib

with open(sys.argv[1], "rb") as f:
    project = tomllib.load(f)["project"]
reqs = list(project["dependencies"])
for extra in sys.argv[2:]:
    reqs += project.get("optional-dependencies", {}).get(extra, [])
print("\n".join(dict.fromkeys(reqs)))
