"""The code layout the README describes: run-time packages without KFP, one ``__all__`` per package, and a
module map and ``python -m`` commands that match the tree."""

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
