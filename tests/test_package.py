"""The package as installed and first run: a CLI that parses before it imports anything heavy, a light core
import and install, the torch branch of the kernels without triton."""

import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _run(code: str) -> str:
    return subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True, cwd=REPO,
                          timeout=120).stdout


def test_cli_help_parses_before_importing_torch():
    code = ("import sys\nfrom dit_cache_fx.__main__ import main\n"
            "for argv in (['--help'], ['demo', '--help'], ['bench', '--help'], ['explain', '--help']):\n"
            "    try:\n        main(argv)\n    except SystemExit:\n        pass\n"
            "assert 'torch' not in sys.modules, 'torch imported'\n")
    out = _run(code)
    assert "demo" in out and "explain" in out
    # every option shows its default
    for help_text in out.split("usage: ")[1:]:
        options = re.split(r"\n  (?=-)", help_text.split("options:", 1)[1])[1:]
        for opt in options:
            assert opt.startswith("-h") or "default:" in opt, opt


def test_import_is_light():
    out = _run("import sys, dit_cache_fx; print(sorted(m for m in ('torch', 'sklearn', 'matplotlib', 'triton', "
               "'diffusers') if m in sys.modules))")
    assert out.strip() == "[]"
    out = _run("import sys, dit_cache_fx; dit_cache_fx.compile; print(sorted(m for m in ('sklearn', 'matplotlib') "
               "if m in sys.modules))")
    assert out.strip() == "[]"


def test_core_requirements_are_light():
    tomllib = pytest.importorskip("tomllib")
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    names = {re.split(r"[<>=; \[]", d)[0].lower() for d in project["dependencies"]}
    assert names == {"torch", "diffusers", "numpy", "safetensors"}
    demo = {re.split(r"[<>=; \[]", d)[0].lower() for d in project["optional-dependencies"]["demo"]}
    assert {"scikit-learn", "matplotlib"} <= demo
    assert "triton" in " ".join(project["optional-dependencies"]["test"])


def test_core_install_without_triton_is_quiet():
    """The core install has no triton: the ops then take their torch branch, eagerly and compiled, and
    importing them prints nothing (torch's triton_op would log "Triton not available" once per op)."""
    code = ("import sys\nsys.modules['triton'] = None\nimport torch\nfrom dit_cache_fx import kernels\n"
            "x = torch.arange(6.0)\n"
            "eager = kernels.l1_sums(x, 2 * x)\ncompiled = torch.compile(lambda a: kernels.l1_sums(a, 2 * a))(x)\n"
            "assert torch.equal(eager, torch.tensor([15.0, 15.0])) and torch.equal(compiled, eager)\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "Triton not available" not in r.stderr + r.stdout
