"""Static checks that dvc.yaml follows the code: each stage's `deps` cover the import closure of its entry point,
and its `params` cover the Params keys its stage module reads (test_dvc_deps.py runs them).

Import closure: from `stages/<stage>.py`, every `import diffusionret...` / `from diffusionret... import x` (at any
depth of a file, so lazy imports count), followed through the modules they name (`x` too when it is a submodule)
and through the `__init__.py` of packages that import something. Parsed with `ast`; nothing is imported.

Params: in the `pipeline/` modules of the closure (only stage modules receive `Params`; library code takes plain
values), attribute chains on a name bound to `params` (`params.eval.rerank_k`, `params.benchmark(name).max_words`)
and on local aliases of its sections (`settings = params.eval`, `bench = params.benchmark(name)`). A section read
whole (`params.diffusion` passed on) needs the whole section. `flatten(params)` (every value, logged to MLflow as
the run's parameters) is not a read: it shapes no output.
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass, field
from pathlib import Path

import yaml

PACKAGE = "diffusionret"
LOGGING_ONLY = {"flatten"}  # calls whose `params` argument is only logged


@dataclass
class StageReport:
    stage: str
    entry: str
    modules: list[str] = field(default_factory=list)  # repository-relative files of the closure
    uncovered: list[str] = field(default_factory=list)
    params_read: list[str] = field(default_factory=list)
    params_missing: list[str] = field(default_factory=list)


def module_file(src: Path, module: str) -> Path | None:
    """src/diffusionret/a/b.py or src/diffusionret/a/b/__init__.py for `diffusionret.a.b`, None if neither exists."""
    base = src.joinpath(*module.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _imported_modules(tree: ast.AST) -> set[str]:
    """Own modules named by the imports of a file, and `from m import x` names that may be submodules."""
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names if alias.name.split(".")[0] == PACKAGE)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module \
                and node.module.split(".")[0] == PACKAGE:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def _imports_something(path: Path) -> bool:
    return any(isinstance(node, (ast.Import, ast.ImportFrom)) for node in ast.walk(ast.parse(path.read_text())))


def import_closure(root: Path, entry: Path) -> list[Path]:
    """Own-package files reachable from `entry` by imports (entry excluded), sorted."""
    src = root / "src"
    seen: set[Path] = set()
    pending = [entry]
    while pending:
        path = pending.pop()
        for module in _imported_modules(ast.parse(path.read_text())):
            parts = module.split(".")
            targets = [module_file(src, ".".join(parts[:i])) for i in range(2, len(parts) + 1)]
            for target in targets:
                if target is None or target in seen:
                    continue
                if target.name == "__init__.py" and not _imports_something(target):
                    continue  # an empty / docstring-only package marker runs no code
                seen.add(target)
                pending.append(target)
    return sorted(seen)


def _stage_bodies(dvc: dict) -> dict[str, dict]:
    """stage name -> its definition (the `do` block of a foreach stage; matrix stages are flat)."""
    return {name: stage.get("do", stage) for name, stage in dvc["stages"].items()}


def entry_point(body: dict) -> str:
    found = re.search(r"(stages/\w+\.py)", body["cmd"])
    if found is None:
        raise ValueError(f"no stages/<name>.py in the command {body['cmd']!r}")
    return found.group(1)


def _dep_path(dep: str | dict) -> str:
    return (next(iter(dep)) if isinstance(dep, dict) else dep).rstrip("/")


def covered(path: str, deps: list[str]) -> bool:
    """A dep covers a file when it is that file or a folder above it."""
    return any(path == dep or path.startswith(dep + "/") for dep in deps)


# ---------------------------------------------------------------------------------------------------
# Params read by the stage modules
# ---------------------------------------------------------------------------------------------------


def _chain(node: ast.AST) -> list[str] | None:
    """`params.eval.k` -> ["params", "eval", "k"]; `params.benchmark(x).m` -> ["params", "benchmark()", "m"]."""
    parts: list[str] = []
    while True:
        if isinstance(node, ast.Attribute):
            parts.append(node.attr)
            node = node.value
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "benchmark":
            parts.append("benchmark()")
            node = node.func.value
        elif isinstance(node, ast.Name):
            parts.append(node.id)
            return parts[::-1]
        else:
            return None


def _key(chain: list[str]) -> str:
    """A Params attribute chain (after `params`) -> a params.yaml key (`benchmarks.<item>.x` for a benchmark)."""
    if chain and chain[0] == "benchmark()":
        return ".".join(["benchmarks.<item>", *chain[1:]])
    return ".".join(chain)


def _strings(node: ast.AST) -> list[str] | None:
    """The strings of a tuple/list literal of string constants, else None."""
    if isinstance(node, (ast.Tuple, ast.List)) and all(isinstance(e, ast.Constant) and isinstance(e.value, str)
                                                       for e in node.elts):
        return [e.value for e in node.elts]
    return None


def _getattr_names(name: ast.AST, function: ast.AST, constants: dict[str, list[str]]) -> list[str] | None:
    """`getattr(section, "x")` -> ["x"]; `getattr(section, key) for key in KEYS` (a constant tuple) -> KEYS."""
    if isinstance(name, ast.Constant) and isinstance(name.value, str):
        return [name.value]
    if not isinstance(name, ast.Name):
        return None
    for node in ast.walk(function):
        if isinstance(node, ast.comprehension) and isinstance(node.target, ast.Name) and node.target.id == name.id:
            if isinstance(node.iter, ast.Name) and node.iter.id in constants:
                return constants[node.iter.id]
            return _strings(node.iter)
    return None


def params_read(path: Path) -> set[str]:
    """params.yaml keys read in one stage module (see the module docstring for what counts)."""
    tree = ast.parse(path.read_text())
    keys: set[str] = set()
    constants = {target.id: found for node in tree.body if isinstance(node, ast.Assign)
                 for target in node.targets if isinstance(target, ast.Name)
                 for found in [_strings(node.value)] if found is not None}
    for function in [node for node in ast.walk(tree) if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))]:
        arguments = [arg.arg for arg in function.args.args + function.args.kwonlyargs]
        if "params" not in arguments:
            continue
        aliases: dict[str, list[str]] = {"params": []}  # name -> chain below `params`
        logged: set[int] = set()
        for node in ast.walk(function):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in LOGGING_ONLY:
                logged.update(id(arg) for arg in node.args if isinstance(arg, ast.Name) and arg.id == "params")
            if isinstance(node, ast.Assign) and len(node.targets) == 1:
                targets, values = node.targets[0], node.value
                both_tuples = isinstance(targets, ast.Tuple) and isinstance(values, ast.Tuple)
                pairs = zip(targets.elts, values.elts) if both_tuples else [(targets, values)]
                for target, value in pairs:
                    chain = _chain(value)
                    if isinstance(target, ast.Name) and chain and chain[0] == "params" and len(chain) > 1:
                        aliases[target.id] = chain[1:]
        parents = {id(child): parent for parent in ast.walk(function) for child in ast.iter_child_nodes(parent)}
        for node in ast.walk(function):
            if not isinstance(node, (ast.Attribute, ast.Name, ast.Call)) or id(node) in logged \
                    or isinstance(getattr(node, "ctx", None), ast.Store):
                continue
            parent = parents.get(id(node))
            if isinstance(parent, ast.Attribute) or (isinstance(parent, ast.Call) and parent.func is node):
                continue  # not the outermost link of a chain
            chain = _chain(node)
            if not chain or chain[0] not in aliases:
                continue
            if isinstance(parent, ast.Assign) and chain[0] == "params" and any(
                    isinstance(t, ast.Name) and t.id in aliases for t in parent.targets):
                continue  # the alias assignment itself; its uses are counted
            if isinstance(parent, ast.Tuple) and isinstance(parents.get(id(parent)), ast.Assign):
                continue
            full = aliases[chain[0]] + chain[1:]
            if chain[0] == "params" and full == ["benchmark()"] and isinstance(parent, ast.Expr):
                continue  # a bare `params.benchmark(name)` statement only checks the name
            if isinstance(parent, ast.Call) and isinstance(parent.func, ast.Name) and parent.func.id == "getattr" \
                    and parent.args[0] is node:
                names = _getattr_names(parent.args[1], function, constants)
                if names is not None:
                    keys.update(_key(full + [name]) for name in names)
                    continue
            if full:
                keys.add(_key(full))
    return keys


def param_covered(key: str, declared: list[str]) -> bool:
    """`train` covers `train.seed`; `benchmarks.${item}.x` (or `${item.evaluated}`) covers `benchmarks.<item>.x`."""
    normalised = [re.sub(r"\$\{item(\.\w+)?\}", "<item>", entry) for entry in declared]
    return any(key == entry or key.startswith(entry + ".") for entry in normalised)


def check(root: Path, dvc_yaml: Path) -> list[StageReport]:
    """One report per stage of `dvc_yaml`: files of the closure not covered by deps, params read but not declared."""
    dvc = yaml.safe_load(dvc_yaml.read_text())
    reports = []
    for stage, body in _stage_bodies(dvc).items():
        entry = entry_point(body)
        deps = [_dep_path(dep) for dep in body.get("deps", [])]
        files = [str(path.relative_to(root)) for path in import_closure(root, root / entry)]
        report = StageReport(stage=stage, entry=entry, modules=files)
        report.uncovered = [path for path in [entry, *files] if not covered(path, deps)]
        read = set()
        for path in files:
            if path.startswith(f"src/{PACKAGE}/pipeline/"):
                read |= params_read(root / path)
        declared = [_dep_path(entry) for entry in body.get("params", [])]
        report.params_read = sorted(read)
        report.params_missing = sorted(key for key in read if not param_covered(key, declared))
        reports.append(report)
    return reports
