"""Check kdbench's import graph against the layers declared in pyproject.toml.

Every ``.py`` file of the scanned packages (``bench`` and ``methods``) is parsed, and every
import in it counts: top-level, inside functions and under ``if TYPE_CHECKING:``, since each
of them is a dependency someone has to keep in mind. The checks:

- no import cycles (each strongly connected component is listed with its edges);
- no upward imports: ``[tool.kdbench.layers] order`` lists the layers from top to bottom, and
  a module may import only from its own layer unit or from layers below it; the units of one
  layer are independent siblings and must not import each other;
- plugin files (``methods/``) import only the plugin API and their shared helpers;
- every module sits in a layer, and every import of a scanned package names a real module.

Run from anywhere: ``python scripts/check_layers.py [--root DIR]``. Exit status 0 when clean
(one summary line), 1 with every violation listed, 2 when the configuration is unusable.
Standard library only, so it runs before (and without) the project's environment.
"""

from __future__ import annotations

import argparse
import ast
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from functools import cached_property
from pathlib import Path

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: the TOML reader pip ships, present in every venv
    from pip._vendor import tomli as tomllib

CONFIG_TABLE = "[tool.kdbench.layers]"


class ConfigError(Exception):
    """The layers table is missing or malformed."""


@dataclass(frozen=True)
class Unit:
    """One independent part of a layer: one or more module prefixes that may import each other.

    Attributes:
        prefixes: Modules or packages (a prefix covers the package and everything inside it).
        layer: Position of the unit's layer, 0 being the top.
    """

    prefixes: tuple[str, ...]
    layer: int

    @property
    def name(self) -> str:
        """The unit's first prefix, which names its layer in messages."""
        return self.prefixes[0]


@dataclass(frozen=True)
class Config:
    """The ``[tool.kdbench.layers]`` table.

    Attributes:
        packages: Top-level packages scanned; imports of anything else are ignored.
        units: Every unit of every layer.
        plugin_package: Package whose files are plugins, or None for no plugin rule.
        plugin_imports: Prefixes a plugin file may import from the scanned packages.
        allow: ``(source, target)`` glob patterns of imports exempt from every rule.
    """

    packages: tuple[str, ...]
    units: tuple[Unit, ...]
    plugin_package: str | None
    plugin_imports: tuple[str, ...]
    allow: tuple[tuple[str, str], ...] = ()

    @cached_property
    def _by_prefix(self) -> dict[str, Unit]:
        return {p: u for u in self.units for p in u.prefixes}

    def unit_of(self, module: str) -> Unit | None:
        """The unit of the longest prefix that covers ``module``, or None."""
        name = module
        while name:
            if name in self._by_prefix:
                return self._by_prefix[name]
            name = name.rpartition(".")[0]
        return None

    def allowance(self, edge: Edge) -> tuple[str, str] | None:
        """The ``allow`` entry that exempts ``edge`` from every rule, or None."""
        for source, target in self.allow:
            if fnmatchcase(edge.source, source) and fnmatchcase(edge.target, target):
                return source, target
        return None


@dataclass(frozen=True)
class Edge:
    """One import statement between two scanned modules."""

    source: str
    target: str
    path: str
    line: int

    @property
    def where(self) -> str:
        """``path:line`` of the import statement."""
        return f"{self.path}:{self.line}"


@dataclass
class Graph:
    """The scanned modules, their files, and the imports between them."""

    files: dict[str, str] = field(default_factory=dict)  # module → path relative to root
    packages: set[str] = field(default_factory=set)  # modules that are packages
    edges: list[Edge] = field(default_factory=list)
    unresolved: list[Edge] = field(default_factory=list)  # imports of missing modules


def load_config(root: Path) -> Config:
    """Read the layers table from ``root/pyproject.toml``.

    Raises:
        ConfigError: the file or the table is missing, or an entry has the wrong shape.
    """
    pyproject = root / "pyproject.toml"
    try:
        with pyproject.open("rb") as f:
            data = tomllib.load(f)
    except (OSError, tomllib.TOMLDecodeError) as e:
        raise ConfigError(f"cannot read {pyproject}: {e}") from e
    table = data.get("tool", {}).get("kdbench", {}).get("layers")
    if not isinstance(table, dict):
        raise ConfigError(f"{pyproject} has no {CONFIG_TABLE} table; declare the layers there")
    packages = _strings(table.get("packages", ["bench", "methods"]), "packages")
    units = _units(table.get("order"))
    plugin_package = table.get("plugin-package")
    if plugin_package is not None and not isinstance(plugin_package, str):
        raise ConfigError(f"{CONFIG_TABLE} plugin-package must be a package name")
    plugin_imports = _strings(table.get("plugin-imports", []), "plugin-imports")
    allow = [_allowance(entry) for entry in _strings(table.get("allow", []), "allow")]
    return Config(tuple(packages), units, plugin_package, tuple(plugin_imports), tuple(allow))


def _allowance(entry: str) -> tuple[str, str]:
    source, arrow, target = entry.partition("->")
    if not arrow or not source.strip() or not target.strip():
        raise ConfigError(
            f"{CONFIG_TABLE} allow entry {entry!r} must read 'SOURCE -> TARGET' "
            "(module names or glob patterns such as 'methods.*')"
        )
    return source.strip(), target.strip()


def _strings(value: object, key: str) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise ConfigError(f"{CONFIG_TABLE} {key} must be a list of module names, got {value!r}")
    return value


def _units(order: object) -> tuple[Unit, ...]:
    """Units from ``order``: each entry a prefix (a layer of one unit) or a list of siblings,
    each sibling a prefix or a list of prefixes forming one unit."""
    if not isinstance(order, list) or not order:
        raise ConfigError(
            f"{CONFIG_TABLE} order must list the layers from top to bottom, got {order!r}"
        )
    units: list[Unit] = []
    seen: set[str] = set()
    for layer, entry in enumerate(order):
        siblings = entry if isinstance(entry, list) else [entry]
        for sibling in siblings:
            prefixes = sibling if isinstance(sibling, list) else [sibling]
            _strings(prefixes, f"order[{layer}]")
            twice = seen.intersection(prefixes)
            if twice:
                raise ConfigError(f"{CONFIG_TABLE} order names {sorted(twice)} more than once")
            seen.update(prefixes)
            units.append(Unit(tuple(prefixes), layer))
    return tuple(units)


def scan(root: Path, packages: Iterable[str]) -> Graph:
    """Parse every ``.py`` file of ``packages`` under ``root`` and collect its imports."""
    graph = Graph()
    for package in packages:
        for path in sorted((root / package).rglob("*.py")):
            parts = path.relative_to(root).with_suffix("").parts
            if path.name == "__init__.py":
                parts = parts[:-1]
                graph.packages.add(".".join(parts))
            graph.files[".".join(parts)] = path.relative_to(root).as_posix()
    scanned = tuple(packages)
    for module, rel in graph.files.items():
        tree = ast.parse((root / rel).read_bytes(), filename=rel)
        for node in ast.walk(tree):
            for target, line in _imported(node, module, module in graph.packages):
                if target.partition(".")[0] not in scanned:
                    continue
                resolved = _resolve(target, graph.files)
                if resolved is None:
                    graph.unresolved.append(Edge(module, target.partition(":")[0], rel, line))
                elif resolved != module:
                    graph.edges.append(Edge(module, resolved, rel, line))
    # ``from a import x, y`` is one import of ``a``, however many names it takes.
    graph.edges = list(dict.fromkeys(graph.edges))
    graph.unresolved = list(dict.fromkeys(graph.unresolved))
    return graph


def _imported(node: ast.AST, module: str, is_package: bool) -> list[tuple[str, int]]:
    """``(target, line)`` for each name one AST node imports: ``a.b`` for ``import a.b`` and
    ``a.b:x`` for ``from a.b import x``, relative bases made absolute (see :func:`_resolve`)."""
    if isinstance(node, ast.Import):
        return [(alias.name, node.lineno) for alias in node.names]
    if not isinstance(node, ast.ImportFrom):
        return []
    base = node.module or ""
    if node.level:
        package = module if is_package else module.rpartition(".")[0]
        for _ in range(node.level - 1):
            package = package.rpartition(".")[0]
        base = f"{package}.{base}" if base else package
    return [(f"{base}:{alias.name}", node.lineno) for alias in node.names]


def _resolve(target: str, files: dict[str, str]) -> str | None:
    """The scanned module an import names, or None if there is none.

    ``a.b:x`` (from ``from a.b import x``) is the module ``a.b.x`` if it exists, else ``a.b``.
    """
    base, _, name = target.partition(":")
    if name and name != "*" and f"{base}.{name}" in files:
        return f"{base}.{name}"
    return base if base in files else None


def find_cycles(edges: Sequence[Edge]) -> list[list[str]]:
    """Strongly connected components with more than one module, each sorted, in name order."""
    successors: dict[str, set[str]] = {}
    for e in edges:
        successors.setdefault(e.source, set()).add(e.target)
        successors.setdefault(e.target, set())
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []
    # Tarjan's algorithm with an explicit stack of (node, remaining successors) frames.
    for start in sorted(successors):
        if start in index:
            continue
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        frames = [(start, iter(sorted(successors[start])))]
        while frames:
            node, pending = frames[-1]
            advanced = False
            for nxt in pending:
                if nxt not in index:
                    index[nxt] = low[nxt] = len(index)
                    stack.append(nxt)
                    on_stack.add(nxt)
                    frames.append((nxt, iter(sorted(successors[nxt]))))
                    advanced = True
                    break
                if nxt in on_stack:
                    low[node] = min(low[node], index[nxt])
            if advanced:
                continue
            frames.pop()
            if frames:
                parent = frames[-1][0]
                low[parent] = min(low[parent], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    components.append(sorted(component))
    return sorted(components)


def cycle_violations(graph: Graph) -> list[str]:
    """One block per import cycle: its modules, then every import inside it."""
    out = []
    for component in find_cycles(graph.edges):
        members = set(component)
        inside = [e for e in graph.edges if e.source in members and e.target in members]
        lines = [f"import cycle among {len(component)} modules: {', '.join(component)}"]
        lines += [f"    {e.where}: {e.source} imports {e.target}" for e in inside]
        out.append("\n".join(lines))
    return out


def layer_violations(graph: Graph, config: Config) -> list[str]:
    """Upward imports, imports between sibling units, and modules in no layer."""
    out = []
    for module, rel in sorted(graph.files.items()):
        if config.unit_of(module) is None and (
            module not in graph.packages or any(e.source == module for e in graph.edges)
        ):
            # An import-free package __init__ (a docstring) cannot break the layering.
            out.append(
                f"{rel}: {module} is in no layer; add it, or a package above it, to "
                f"{CONFIG_TABLE} order in pyproject.toml"
            )
    for e in graph.edges:
        source, target = config.unit_of(e.source), config.unit_of(e.target)
        if source is None or target is None or source is target:
            continue
        if target.layer < source.layer:
            out.append(
                f"{e.where}: upward import: {e.source} (layer {source.name!r}) imports "
                f"{e.target} (layer {target.name!r}), which is above it; move the shared code "
                "down a layer or the importing code up"
            )
        elif target.layer == source.layer:
            out.append(
                f"{e.where}: sibling import: {e.source} (layer {source.name!r}) imports "
                f"{e.target} (layer {target.name!r}); siblings of one layer must stay "
                "independent: move the shared code down a layer, or split the layer"
            )
    return out


def plugin_violations(graph: Graph, config: Config) -> list[str]:
    """Imports by plugin files of anything in the scanned packages but the allowed ones."""
    plugins = config.plugin_package
    if plugins is None:
        return []
    allowed = config.plugin_imports

    def is_allowed(module: str) -> bool:
        return any(module == a or module.startswith(a + ".") for a in allowed)

    out = []
    for e in graph.edges:
        if e.source.startswith(plugins + ".") and not is_allowed(e.target):
            out.append(
                f"{e.where}: plugin import: {e.source} imports {e.target}; files in "
                f"{plugins}/ may import only {', '.join(allowed)} from "
                f"{', '.join(config.packages)}"
            )
    return out


def unresolved_violations(graph: Graph) -> list[str]:
    """Imports of scanned packages that name no module of the tree (moved or deleted)."""
    return [
        f"{e.where}: missing module: {e.source} imports {e.target}, which is no module of "
        "this tree; import it from where it lives now"
        for e in graph.unresolved
    ]


def apply_allowances(graph: Graph, config: Config) -> list[str]:
    """Drop the imports that ``allow`` exempts; returns the entries that matched nothing."""
    used: set[tuple[str, str]] = set()

    def kept(edges: list[Edge]) -> list[Edge]:
        out = []
        for e in edges:
            allowance = config.allowance(e)
            if allowance is None:
                out.append(e)
            else:
                used.add(allowance)
        return out

    graph.edges = kept(graph.edges)
    graph.unresolved = kept(graph.unresolved)
    return [f"{s} -> {t}" for s, t in config.allow if (s, t) not in used]


def check(root: Path) -> tuple[list[str], str, list[str]]:
    """Every violation under ``root``, a one-line summary of what was checked, and the
    ``allow`` entries that exempted nothing (left to tidy, not failures: a branch that fixes
    an exempted import should not break the check of a branch merged beside it).

    Raises:
        ConfigError: the layers table is unusable.
    """
    config = load_config(root)
    graph = scan(root, config.packages)
    pairs = {(e.source, e.target) for e in graph.edges}
    statements = len(graph.edges)
    unused = apply_allowances(graph, config)
    violations = (
        cycle_violations(graph)
        + layer_violations(graph, config)
        + plugin_violations(graph, config)
        + unresolved_violations(graph)
    )
    layers = 1 + max(u.layer for u in config.units)
    summary = (
        f"{len(graph.files)} modules, {len(pairs)} edges ({statements} imports), {layers} layers"
    )
    return violations, summary, unused


def main(argv: Sequence[str] | None = None) -> int:
    """Run the check; returns the exit status (0 clean, 1 violations, 2 bad configuration)."""
    parser = argparse.ArgumentParser(description=__doc__.partition("\n")[0])
    parser.add_argument(
        "--root",
        type=Path,
        default=Path(__file__).resolve().parent.parent,
        help="the tree to check (holds pyproject.toml); default: this checkout",
    )
    args = parser.parse_args(argv)
    try:
        violations, summary, unused = check(args.root)
    except (ConfigError, SyntaxError) as e:
        print(f"check_layers: {e}", file=sys.stderr)
        return 2
    for entry in unused:
        print(
            f"check_layers: note: allow entry {entry!r} exempts nothing any more; remove it "
            "from pyproject.toml",
            file=sys.stderr,
        )
    if violations:
        print("\n".join(violations))
        print(f"check_layers: {len(violations)} violation(s) in {summary}", file=sys.stderr)
        return 1
    print(f"check_layers: ok: {summary}; no cycles, no upward imports")
    return 0


if __name__ == "__main__":
    sys.exit(main())
