"""The code layout the README describes: run-time packages without KFP, one ``__all__`` per package, packages that
import only downward (the layers, declared once below), tag names in one module, and a module map and
``python -m`` commands that match the tree."""

from __future__ import annotations

import ast
import importlib.util
import re
import subprocess
import sys
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


def _is_module(name: str) -> bool:
    try:
        importlib.import_module(name)
    except ImportError:
        return False
    return True


def test_every_dotted_reference_in_the_code_and_readme_resolves():
    """``:class:`components.x.Y``` and friends name things that exist (references outlive moves otherwise)."""
    sources = [REPO_ROOT / "README.md", *(path for top in MAPPED for path in (REPO_ROOT / top).rglob("*.py"))]
    pattern = re.compile(r":(?:class|mod|func|meth|data|exc):`~?((?:components|pipelines|configs)\.[\w.]+)`")
    references = {(source, ref) for source in sources for ref in pattern.findall(source.read_text())}
    assert len(references) >= 20
    broken = []
    for source, ref in sorted(references):
        parts = ref.split(".")
        depth = next(i for i in range(len(parts), 0, -1) if _is_module(".".join(parts[:i])))
        target = importlib.import_module(".".join(parts[:depth]))
        for attribute in parts[depth:]:
            target = getattr(target, attribute, None)
        if target is None:
            broken.append(f"{source.relative_to(REPO_ROOT)}: {ref}")
    assert not broken, broken


def test_every_test_the_readme_cites_exists():
    """The README's reliability tables cite test files and functions; each one is there."""
    text = (REPO_ROOT / "README.md").read_text() + (REPO_ROOT / "benchmarks" / "README.md").read_text()
    cited = set(re.findall(r"(tests/[\w/]+\.py)((?:::\w+)?)", text))
    assert len(cited) >= 20
    missing = []
    for path, function in sorted(cited):
        source = REPO_ROOT / path
        if not source.is_file() or (function and f"def {function[2:]}(" not in source.read_text()):
            missing.append(path + function)
    assert not missing, missing
