"""Static checks over the source tree: no code path that turns caller data into code or objects
(pickle, marshal, eval/exec, yaml.load without SafeLoader, shell=True, os.system), found by walking the AST."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("services", "gateway", "tagalong")
SKIP_PARTS = {"v1", "__pycache__"}  # tagalong/v1 is generated protobuf code

BANNED_CALLS = {
    ("pickle", "load"), ("pickle", "loads"), ("pickle", "Unpickler"), ("cPickle", "loads"),
    ("marshal", "load"), ("marshal", "loads"), ("shelve", "open"), ("dill", "load"), ("dill", "loads"),
    ("joblib", "load"), ("os", "system"), ("os", "popen"), ("subprocess", "getoutput"),
    ("subprocess", "getstatusoutput"), ("numpy", "load"), ("np", "load"), ("torch", "load"),
}
BANNED_BUILTINS = {"eval", "exec", "compile", "__import__"}
BANNED_IMPORTS = {"pickle", "cPickle", "marshal", "shelve", "dill"}


def _sources() -> list[Path]:
    files = []
    for pkg in PACKAGES:
        for path in sorted((ROOT / pkg).rglob("*.py")):
            if not SKIP_PARTS.intersection(path.relative_to(ROOT).parts):
                files.append(path)
    return files


def _dotted(node: ast.AST) -> tuple[str, ...]:
    parts: list[str] = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        parts.append(node.id)
    return tuple(reversed(parts))


def findings(tree: ast.AST, name: str) -> list[str]:
    """Every dangerous construct in one module's AST, as 'file:line what'."""
    out: list[str] = []
    for node in ast.walk(tree):
        where = f"{name}:{getattr(node, 'lineno', '?')}"
        if isinstance(node, ast.Import):
            out += [f"{where} import {a.name}" for a in node.names if a.name.split(".")[0] in BANNED_IMPORTS]
        elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] in BANNED_IMPORTS:
            out.append(f"{where} from {node.module} import ...")
        elif isinstance(node, ast.Call):
            dotted = _dotted(node.func)
            if isinstance(node.func, ast.Name) and node.func.id in BANNED_BUILTINS:
                out.append(f"{where} {dotted[0]}()")
            elif len(dotted) >= 2 and dotted[-2:] in BANNED_CALLS:
                # np.load is safe only with allow_pickle=False spelled out.
                safe = dotted[-1] == "load" and dotted[-2] in ("np", "numpy") and any(
                    k.arg == "allow_pickle" and isinstance(k.value, ast.Constant) and k.value.value is False
                    for k in node.keywords)
                if not safe:
                    out.append(f"{where} {'.'.join(dotted)}()")
            elif dotted[-2:] == ("yaml", "load") or dotted[-2:] == ("yaml", "load_all"):
                loader = next((k.value for k in node.keywords if k.arg == "Loader"),
                              node.args[1] if len(node.args) > 1 else None)
                if loader is None or "Safe" not in ".".join(_dotted(loader)):
                    out.append(f"{where} {'.'.join(dotted)}() without SafeLoader")
            elif dotted[-1:] == ("unsafe_load",) or dotted[-2:] == ("yaml", "full_load"):
                out.append(f"{where} {'.'.join(dotted)}()")
            for kw in node.keywords:
                if kw.arg == "shell" and not (isinstance(kw.value, ast.Constant) and kw.value.value is False):
                    out.append(f"{where} {'.'.join(dotted)}(shell=...)")
    return out


def test_the_tree_has_sources() -> None:
    names = {p.relative_to(ROOT).parts[0] for p in _sources()}
    assert {"services", "gateway", "tagalong"} <= names


@pytest.mark.parametrize("path", _sources(), ids=lambda p: str(p.relative_to(ROOT)))
def test_no_code_from_data(path: Path) -> None:
    tree = ast.parse(path.read_text(), filename=str(path))
    assert findings(tree, str(path.relative_to(ROOT))) == []


@pytest.mark.parametrize(("source", "expected"), [
    pytest.param("import pickle\npickle.loads(b'')", 2, id="pickle"),
    pytest.param("eval(x)", 1, id="eval"),
    pytest.param("exec(x)", 1, id="exec"),
    pytest.param("import yaml\nyaml.load(s)", 1, id="yaml-load"),
    pytest.param("import yaml\nyaml.load(s, Loader=yaml.SafeLoader)", 0, id="yaml-safe"),
    pytest.param("import yaml\nyaml.safe_load(s)", 0, id="yaml-safe-load"),
    pytest.param("import numpy as np\nnp.load(f)", 1, id="np-load"),
    pytest.param("import numpy as np\nnp.load(f, allow_pickle=False)", 0, id="np-load-safe"),
    pytest.param("import subprocess\nsubprocess.run(c, shell=True)", 1, id="shell"),
    pytest.param("import os\nos.system(c)", 1, id="os-system"),
    pytest.param("json.loads(s)", 0, id="json"),
    pytest.param("model.eval()", 0, id="torch-eval-method"),
])
def test_the_checker_finds_what_it_should(source: str, expected: int) -> None:
    """The checker itself can fail: each banned construct is caught, each safe spelling is not."""
    assert len(findings(ast.parse(source), "snippet")) == expected
