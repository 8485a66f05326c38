"""The code layout the README describes: run-time packages without KFP, one ``__all__`` per package, packages that
import only downward (the layers, declared once below), tag names in one module, and a module map and
``python -m`` commands that match the tree."""

from __future__ import annotations

import ast
import functools
import importlib
import importlib.util
import io
import re
import subprocess
import sys
import tokenize
from collections.abc import Iterator
from pathlib import Path

from builders import REPO_ROOT

RUNTIME = REPO_ROOT / "components"
MAPPED = ("components", "pipelines", "configs")
# The packages from the bottom up: a module imports only from its own package or from a lower layer, never from
# another package of its own layer. configs reads and checks input; common is what every step shares; a step's
# package uses its sub-packages and lower steps (a model's identity for MMLU reads merge's checksums; train knows
# nothing of evaluation); the gate compares what train and evaluate made; run's exit handler deletes a multi-node
# job; pipelines (KFP) is on top.
LAYERS = (
    ("configs",),
    ("components.common",),
    ("components.data", "components.demo", "components.merge"),
    ("components.evaluate.mmlu",),
    ("components.evaluate.task",),
    ("components.evaluate.generate",),
    ("components.evaluate",),
    ("components.train.multinode",),
    ("components.train",),
    ("components.gate", "components.run"),
    ("pipelines",),
)
TAGS_MODULE = REPO_ROOT / "components" / "common" / "tags.py"


def _modules(package: Path) -> list[str]:
    """Dotted names of every module under ``package``."""
    return sorted(".".join(path.relative_to(REPO_ROOT).with_suffix("").parts).removesuffix(".__init__")
                  for path in package.rglob("*.py"))


def test_no_run_time_module_imports_kfp():
    """Every module under components/, imported the way a running task imports it, leaves kfp unimported."""
    code = ("import importlib, sys\n"
            f"for name in {_modules(RUNTIME)!r}:\n"
            "    importlib.import_module(name)\n"
            "print(sorted(m for m in sys.modules if m == 'kfp' or m.startswith('kfp.')))")
    out = subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO_ROOT, capture_output=True,
                         text=True).stdout
    assert out.strip() == "[]"


def test_every_package_lists_its_modules_in_one_all():
    for init in sorted(RUNTIME.rglob("__init__.py")):
        package = init.parent
        children = sorted({path.stem for path in package.glob("*.py") if path.stem != "__init__"}
                          | {path.parent.name for path in package.glob("*/__init__.py")})
        tree = ast.parse(init.read_text())
        listed = [node.value for node in tree.body if isinstance(node, ast.Assign)
                  and any(getattr(target, "id", "") == "__all__" for target in node.targets)]
        assert len(listed) == 1, f"{init}: one __all__"
        assert sorted(ast.literal_eval(listed[0])) == children, init
        imports = [node for node in tree.body if isinstance(node, ast.Import | ast.ImportFrom)
                   and not (isinstance(node, ast.ImportFrom) and node.module == "__future__")]
        assert not imports, f"{init}: a package __init__ imports nothing (cheap, cycle-free imports)"


def _module_files() -> dict[str, Path]:
    """Every module of the shipped packages, by dotted name (a package by its own name)."""
    return {".".join(path.relative_to(REPO_ROOT).with_suffix("").parts).removesuffix(".__init__"): path
            for top in MAPPED for path in sorted((REPO_ROOT / top).rglob("*.py"))}


def _import_graph() -> dict[str, set[str]]:
    """module -> the project's modules it imports, from the source: every import, those inside functions too.

    ``from package import name`` is an edge to ``package.name`` when that is a module, else to ``package``.
    """
    files = _module_files()
    graph: dict[str, set[str]] = {}
    for name, path in files.items():
        here = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
        targets: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                wanted = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = ".".join([*here[:len(here) - node.level + 1], node.module or ""]) if node.level else node.module
                base = base.strip(".")
                wanted = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in files else base for alias in node.names]
            else:
                continue
            for dotted in wanted:
                parts = dotted.split(".")
                found = next((".".join(parts[:i]) for i in range(len(parts), 0, -1) if ".".join(parts[:i]) in files),
                             None)
                if found and found != name:
                    targets.add(found)
        graph[name] = targets
    return graph


def _package(module: str, files: dict[str, Path]) -> str:
    return module if files[module].name == "__init__.py" else module.rsplit(".", 1)[0]


def _cycle(graph: dict[str, set[str]]) -> list[str]:
    """One cycle of ``graph`` (its nodes in order, the first repeated at the end), or [] when there is none."""
    state: dict[str, int] = {}  # 1 on the current path, 2 done
    path: list[str] = []

    def visit(node: str) -> list[str]:
        state[node] = 1
        path.append(node)
        for target in sorted(graph.get(node, ())):
            if state.get(target) == 1:
                return [*path[path.index(target):], target]
            if target not in state and (found := visit(target)):
                return found
        state[node] = 2
        path.pop()
        return []

    for start in sorted(graph):
        if start not in state and (found := visit(start)):
            return found
    return []


def test_packages_import_only_downward_and_never_in_a_loop():
    """The import graph between packages, read from the source (imports inside functions count), has no cycle and
    no edge from a lower layer to a higher one (:data:`LAYERS`)."""
    layer = {package: level for level, packages in enumerate(LAYERS) for package in packages}
    files = _module_files()
    edges: dict[tuple[str, str], str] = {}
    for module, targets in _import_graph().items():
        for target in targets:
            if _package(module, files) != _package(target, files):
                edges.setdefault((_package(module, files), _package(target, files)), f"{module} imports {target}")
    assert len(edges) >= 30
    packages = {package: set() for pair in edges for package in pair}
    for source, target in edges:
        packages[source].add(target)
    assert not _cycle(packages), " -> ".join(_cycle(packages))
    undeclared = sorted(package for package in packages if package not in layer)
    assert not undeclared, f"declare these packages in LAYERS: {undeclared}"
    upward = sorted(example for (source, target), example in edges.items() if layer[source] <= layer[target])
    assert not upward, upward


def test_no_module_imports_one_that_imports_it_back():
    graph = _import_graph()
    assert not _cycle(graph), " -> ".join(_cycle(graph))


def test_the_layout_checks_see_a_loop_and_an_upward_import():
    """The checks above can fail: a loop and a lower layer importing a higher one are both found."""
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) == []
    graph = _import_graph()
    assert "configs.safe_json" in graph["configs.loading"]  # an import at the top
    assert "components.train.multinode.training_job" in graph["components.train.train"]  # one inside a method


def _tag_names() -> dict[str, str]:
    """The tag names components/common/tags.py declares: value -> constant."""
    tree = ast.parse(TAGS_MODULE.read_text())
    return {node.value.value: node.targets[0].id for node in tree.body
            if isinstance(node, ast.Assign) and isinstance(node.value, ast.Constant)
            and node.targets[0].id.endswith(("_TAG", "_PREFIX"))}


def test_every_tag_name_is_written_once_in_the_tags_module():
    """No ``"llmft.*"`` string and no other tag name that tags.py declares (``kfp.run_id``, ``mlflow.*``) is
    spelt out anywhere else in the shipped code: each module imports the constant."""
    names = _tag_names()
    assert {"kfp.run_id", "llmft.mmlu_eval_key", "mlflow.parentRunId"} <= set(names)
    spelt = []
    for path in [*(path for top in MAPPED for path in (REPO_ROOT / top).rglob("*.py")),
                 *(REPO_ROOT / "benchmarks").glob("*.py")]:
        if path == TAGS_MODULE:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and (
                    node.value.startswith("llmft.") or node.value in names):
                spelt.append(f"{path.relative_to(REPO_ROOT)}:{node.lineno}: {node.value!r}")
    assert not spelt, spelt


def _readme_map() -> dict[str, set[str]]:
    """The module map in README.md's "Where things are": directory -> the file names it lists there."""
    text = (REPO_ROOT / "README.md").read_text()
    block = text.split("## Where things are", 1)[1].split("```", 2)[1]
    listed: dict[str, set[str]] = {}
    stack: list[tuple[int, str]] = []
    for line in block.splitlines()[1:]:
        if not line.strip():
            continue
        indent = len(line) - len(line.lstrip())
        first = line.split()[0]
        if indent < 20 and first.endswith("/"):
            while stack and stack[-1][0] >= indent:
                stack.pop()
            stack.append((indent, (stack[-1][1] if stack else "") + first))
        for name in re.findall(r"\b[a-z_]+\.py\b", line):
            listed.setdefault(stack[-1][1], set()).add(name)
    return listed


def test_the_readmes_module_map_matches_the_tree():
    listed = _readme_map()
    for top in MAPPED:
        for path in sorted((REPO_ROOT / top).rglob("*.py")):
            if path.name == "__init__.py":
                continue
            directory = str(path.parent.relative_to(REPO_ROOT)) + "/"
            assert path.name in listed.get(directory, set()), f"{path.relative_to(REPO_ROOT)} is not in the map"
    for directory, names in listed.items():
        for name in names:
            assert (REPO_ROOT / directory / name).is_file(), f"the map names {directory}{name}, which is not there"


def test_every_python_dash_m_in_the_docs_and_manifests_names_a_module_that_exists():
    sources = [REPO_ROOT / "README.md", REPO_ROOT / "Makefile", REPO_ROOT / "Dockerfile",
               *(REPO_ROOT / "benchmarks").glob("*.md"), *(REPO_ROOT / "deploy").rglob("*.yaml"),
               *(REPO_ROOT / "configs").glob("*.yaml")]
    sources += [path for top in MAPPED for path in (REPO_ROOT / top).rglob("*.py")]
    named = {name for source in sources
             for name in re.findall(r"python3? -m ([A-Za-z_][\w.]*[A-Za-z_])", source.read_text())}
    ours = sorted(name for name in named if name.split(".")[0] in (*MAPPED, "benchmarks"))
    assert len(ours) >= 10
    missing = [name for name in ours if importlib.util.find_spec(name) is None]
    assert not missing, missing


# References in prose: the docs, and the docstrings and comments of every Python file. They are resolved
# statically (files and the names each module binds), so nothing is imported and nothing heavy runs.
PROJECT = (*MAPPED, "benchmarks")
DOCS = ("README.md", "benchmarks/README.md", "CHANGELOG.md")
DOCUMENTED = (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)
# `components.gate.rules.Comparison`, ``python -m pipelines.submit``, :mod:`configs.schema`; not a.components.b
DOTTED = re.compile(rf"(?<![\w./-])((?:{'|'.join(PROJECT)})(?:\.[A-Za-z_]\w*)+)")
HOST_NAME = re.compile(r"\.(?:org|com|io|net)$")  # pipelines.kubeflow.org is a token audience, not a module
ROLE = re.compile(r":(?:class|mod|func|meth|attr|data|exc|obj):`~?(\.?[A-Za-z_][\w.]*)`")
# components/gate/rules.py, tests/gate/test_rules.py::test_a_tie_whose_float_sums_differ_never_promotes,
# compiled/*.yaml, deploy/; not output/<run>/x.json
REPO_PATH = re.compile(r"(?<![\w./<>{}*-])((?:components|pipelines|configs|benchmarks|tests|deploy|image|compiled)"
                       r"/[\w./*<>{}-]*)(?:::([A-Za-z_][\w.]*))?")
FILE_SUFFIXES = {".py", ".yaml", ".yml", ".json", ".jsonl", ".csv", ".sh", ".md", ".txt"}
# reliability/properties/test_redaction.py (in tests/): relative, ends in a file name with one of those suffixes
RELATIVE_PATH = re.compile(rf"(?<![\w./<>{{}}*-])((?:[\w.-]+/)+[\w.-]+\.(?:{'|'.join(s[1:] for s in FILE_SUFFIXES)}))"
                           r"(?![\w/])")


def _python_files() -> list[Path]:
    return sorted(path for top in (*PROJECT, "tests") for path in (REPO_ROOT / top).rglob("*.py"))


def _docs() -> list[Path]:
    return [REPO_ROOT / name for name in DOCS if (REPO_ROOT / name).is_file()]


def _prose(path: Path) -> Iterator[tuple[str, list[ast.ClassDef]]]:
    """A document whole, or a Python file's docstrings (with the classes around each) and comments."""
    if path.suffix != ".py":
        yield path.read_text(), []
        return
    source = path.read_text()

    def docstrings(node: ast.AST, classes: list[ast.ClassDef]) -> Iterator[tuple[str, list[ast.ClassDef]]]:
        if isinstance(node, DOCUMENTED) and (doc := ast.get_docstring(node, clean=False)):
            yield doc, classes
        inner = [node, *classes] if isinstance(node, ast.ClassDef) else classes
        for child in ast.iter_child_nodes(node):
            yield from docstrings(child, inner)

    yield from docstrings(ast.parse(source), [])
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        if token.type == tokenize.COMMENT:
            yield token.string, []


def _bound(body: list[ast.stmt]) -> dict[str, ast.stmt]:
    """The names a module or class body binds (definitions, assignments, imports, also under if/try)."""
    names: dict[str, ast.stmt] = {}
    for node in body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            names[node.name] = node
        elif isinstance(node, ast.Assign | ast.AnnAssign | ast.AugAssign):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names.update((name.id, node) for target in targets for name in ast.walk(target)
                         if isinstance(name, ast.Name))
        elif isinstance(node, ast.Import | ast.ImportFrom):
            names.update(((alias.asname or alias.name).split(".")[0], node) for alias in node.names)
        elif isinstance(node, ast.If | ast.Try):
            for block in (node.body, node.orelse, *(handler.body for handler in getattr(node, "handlers", []))):
                names.update(_bound(block))
    return names


@functools.cache
def _module_names(path: Path) -> dict[str, ast.stmt]:
    return _bound(ast.parse(path.read_text()).body)


def _module_file(base: Path, parts: list[str]) -> Path | None:
    path = base.joinpath(*parts)
    return next((file for file in (path.with_suffix(".py"), path / "__init__.py") if file.is_file()), None)


def _defines(names: dict[str, ast.stmt], module: Path, parts: list[str]) -> bool:
    """Whether ``parts`` (``Class.method``, ``CONSTANT``) is bound in ``names`` (those of ``module`` or a class),
    following imports from project modules to where the name is defined."""
    for index, name in enumerate(parts):
        node = names.get(name)
        rest = parts[index + 1:]
        if node is None:
            return False
        if isinstance(node, ast.ImportFrom):
            alias = next(alias for alias in node.names if (alias.asname or alias.name) == name)
            base = module.parents[node.level - 1] if node.level else REPO_ROOT
            origin = [*(node.module or "").split("."), alias.name]
            if not node.level and origin[0] not in PROJECT:
                return True  # another library's name: its own docs vouch for it
            return _resolves(base, [part for part in origin if part] + rest)
        if isinstance(node, ast.Import):
            return True
        if not isinstance(node, ast.ClassDef):
            return not rest  # a function or a value: nothing to look inside
        names = _bound(node.body)
    return True


def _resolves(base: Path, parts: list[str]) -> bool:
    """Whether ``parts`` names a module under ``base`` or a name such a module binds."""
    depth = next((depth for depth in range(len(parts), 0, -1) if _module_file(base, parts[:depth])), 0)
    module = _module_file(base, parts[:depth]) if depth else None
    return module is not None and _defines(_module_names(module), module, parts[depth:])


def _resolves_elsewhere(parts: list[str]) -> bool:
    """A name outside the project: an attribute path of the standard library, or an installed package."""
    if parts[0] not in sys.stdlib_module_names:
        return importlib.util.find_spec(parts[0]) is not None
    target = importlib.import_module(parts[0])
    for depth, part in enumerate(parts[1:], start=2):
        if importlib.util.find_spec(".".join(parts[:depth])) if hasattr(target, "__path__") else False:
            target = importlib.import_module(".".join(parts[:depth]))
        elif (target := getattr(target, part, None)) is None:
            return False
    return True


def _role_resolves(source: Path, target: str, classes: list[ast.ClassDef]) -> bool:
    """A role's target: absolute (:mod:`configs.schema`), relative to the source's package (a leading dot), or
    bare (a name of the classes around the docstring, then of the source's module, then the standard library's
    or an installed package's: :func:`importlib.util.find_spec`)."""
    parts = target.lstrip(".").split(".")
    if parts[0] in PROJECT:
        return _resolves(REPO_ROOT, parts)
    if target.startswith("."):
        return _resolves(source.parent, parts)
    if source.suffix == ".py":
        scopes = [_bound(cls.body) for cls in classes] + [_module_names(source)]
        if any(_defines(names, source, parts) for names in scopes):
            return True
    return _resolves_elsewhere(parts)


def test_every_dotted_reference_in_the_docs_docstrings_and_comments_resolves():
    """Each reference to project code in prose names something that exists (references outlive moves
    otherwise): ``:class:``/``:func:``/``:meth:``... roles, absolute (``components.gate.rules.Comparison``),
    relative to the package (``.job_spec.node_pod``) or bare (a name of the module or of the class around the
    docstring); and every dotted project name written in prose, in backticks or after ``python -m``."""
    checked, broken = 0, []
    for source in [*_docs(), *_python_files()]:
        for text, classes in _prose(source):
            for target in set(ROLE.findall(text)):
                checked += 1
                if not _role_resolves(source, target, classes):
                    broken.append(f"{source.relative_to(REPO_ROOT)}: :role:`{target}`")
            for name in set(DOTTED.findall(text)) - set(ROLE.findall(text)):
                checked += 1
                if not HOST_NAME.search(name) and not _resolves(REPO_ROOT, name.split(".")):
                    broken.append(f"{source.relative_to(REPO_ROOT)}: {name}")
    assert checked >= 500
    assert not broken, "\n".join(broken)


def _tracked_tails() -> set[str]:
    """``folder/file`` of every file in the project's folders: what a relative path to a file of ours ends in."""
    return {"/".join(path.parts[-2:]) for top in (*PROJECT, "tests", "deploy", "image", "compiled")
            for path in (REPO_ROOT / top).rglob("*") if path.is_file() and "__pycache__" not in path.parts}


def test_every_repo_path_in_the_docs_docstrings_and_comments_exists():
    """``components/gate/rules.py``, ``tests/conftest.py::mlflow_server``, ``compiled/*.yaml`` and ``deploy/``
    written anywhere in prose (and in the Makefile, Dockerfile and image scripts) are in the tree, and a
    ``::name`` is defined in that file. A relative path that ends in one of our files
    (``reliability/kills/test_train_kills.py``, here in tests/) resolves from the source's folder or one above
    it; a storage path (``output/<run>/eval/results.json``) is none of these."""
    sources = [*_docs(), *_python_files(), REPO_ROOT / "Makefile", REPO_ROOT / "Dockerfile",
               *(REPO_ROOT / "image").glob("*.sh")]
    tails = _tracked_tails()
    checked, broken = 0, []
    for source in sources:
        where = source.relative_to(REPO_ROOT)
        for text, _ in _prose(source):
            for path, name in set(REPO_PATH.findall(text)):
                path = path.rstrip(".")
                if re.search(r"[<>{}]", path) or not (path.endswith("/") or Path(path).suffix in FILE_SUFFIXES):
                    continue
                checked += 1
                found = sorted(REPO_ROOT.glob(path.rstrip("/"))) if "*" in path else [REPO_ROOT / path]
                if not found or not all(found_path.exists() for found_path in found):
                    broken.append(f"{where}: {path}")
                elif name and not _defines(_module_names(found[0]), found[0], name.split(".")):
                    broken.append(f"{where}: {path}::{name}")
            for path in set(RELATIVE_PATH.findall(text)):
                if "/".join(Path(path).parts[-2:]) in tails:
                    checked += 1
                    if not any((folder / path).is_file() for folder in source.parents
                               if folder.is_relative_to(REPO_ROOT)):
                        broken.append(f"{where}: {path}")
    assert checked >= 150
    assert not broken, "\n".join(broken)


MAX_MODULE_LINES = 400
WHY_LONG = re.compile(r"^This module is longer than the others\b.*\bbecause\b", re.DOTALL)


def test_no_module_is_over_400_lines_unless_its_docstring_says_why():
    """A module does one job and reads in one sitting; one that must be longer says why in a paragraph of its
    docstring ("This module is longer than the others ... because ...", as :mod:`configs.schema` does)."""
    unexplained = []
    for path in sorted(path for top in MAPPED for path in (REPO_ROOT / top).rglob("*.py")):
        lines = len(path.read_text().splitlines())
        docstring = ast.get_docstring(ast.parse(path.read_text())) or ""
        if lines > MAX_MODULE_LINES and not any(WHY_LONG.match(part) for part in docstring.split("\n\n")):
            unexplained.append(f"{path.relative_to(REPO_ROOT)}: {lines} lines")
    assert not unexplained, "\n".join(unexplained)
