"""`python bench/<script>.py` puts `bench/` first on `sys.path`: no script there may shadow a module that our
dependencies import (bench/kernels.py once hid Hugging Face's `kernels`, which diffusers imports), and every
script's module-level imports must work from the script's own `sys.path`."""

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
BENCH = REPO / "bench"
SCRIPTS = sorted(BENCH.glob("*.py"))


def _python(code: str, *args: str, timeout: float = 240) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code, *args], cwd=REPO, capture_output=True, text=True,
                          timeout=timeout)


def test_no_script_is_named_like_an_installed_module():
    # asked with bench/ off the path: a name that resolves is a module a dependency could import
    code = ("import importlib.util, json, sys\n"
            "sys.path = [p for p in sys.path if p not in ('', '.') and not p.rstrip('/').endswith('bench')]\n"
            "print(json.dumps({n: importlib.util.find_spec(n) is not None for n in sys.argv[1:]}))")
    r = _python(code, *(s.stem for s in SCRIPTS))
    assert r.returncode == 0, r.stderr
    shadowing = [name for name, found in json.loads(r.stdout).items() if found]
    assert not shadowing, f"bench/ scripts named like installed modules: {shadowing}"
    # and never the names our dependencies are known to import by a bare name
    assert not {s.stem for s in SCRIPTS} & {"kernels", "metrics", "utils", "triton", "diffusers", "transformers"}


def _module_level_imports(path: Path) -> str:
    """The script's module-level import statements, as source (what runs before its main())."""
    tree = ast.parse(path.read_text())
    lines = [ast.unparse(node) for node in tree.body if isinstance(node, (ast.Import, ast.ImportFrom))
             and not (isinstance(node, ast.ImportFrom) and node.module == "__future__")]
    return "\n".join(lines)


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_script_imports_as_python_runs_it(script):
    # sys.path as `python bench/<script>.py` sets it: the script's folder first; then the imports diffusers'
    # model modules make (the import that failed when bench/kernels.py shadowed `kernels`)
    code = (f"import sys\nsys.path[0] = {str(script.parent)!r}\n"
            + _module_level_imports(script)
            + "\nimport diffusers.loaders.peft\nfrom diffusers.models.transformers import transformer_flux\n")
    r = _python(code)
    assert r.returncode == 0, r.stderr[-3000:]
