"""A newcomer's first hour: explain() that fits a screen and draws the regions, a CLI that parses before it
imports anything heavy, a light core install, summary() before any call."""

import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import dit_cache_fx

from toy import ToyDiT

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def compiled():
    c = dit_cache_fx.compile(ToyDiT(num_layers=5), cache="F1B1_W1_R1.0", fullgraph=True)
    with torch.no_grad():
        for s in range(3):
            c(torch.randn(1, 8, 16), torch.tensor([100.0 - s]))
    return c


def test_explain_fits_a_screen_and_says_what_was_not_measured(compiled):
    report = dit_cache_fx.explain(compiled)
    text = str(report)
    lines = text.splitlines()
    assert len(lines) <= 40 and max(map(len, lines)) <= 160, text
    assert "graph breaks: not measured (pass example inputs)" in text
    assert "Fn=1 [transformer_blocks.0..transformer_blocks.0] | Mn=3" in text and "streams cached: hidden" in text
    assert "torch.ops.higher_order.cond(" in text and "def forward" not in text  # the excerpt, not the code
    verbose = report.text(verbose=True)
    assert "def forward" in verbose and "branch r0_compute" in verbose and len(verbose) > 3 * len(text)
    measured = dit_cache_fx.explain(compiled, torch.randn(1, 8, 16), torch.tensor([5.0]))
    assert "Dynamo graphs: 1, graph breaks: 0" in str(measured)


def test_explain_picture(compiled, tmp_path):
    report = dit_cache_fx.explain(compiled)
    svg = Path(report.save(tmp_path / "regions.svg")).read_text()
    assert svg.startswith("<svg") and svg.count('fill="#4C78A8"') == 1 + 1  # Fn block + legend
    assert svg.count('fill="#F58518"') == 3 + 1 and svg.count('fill="#54A24B"') == 1 + 1  # Mn, Bn (+ legend)
    assert "torch.cond: Mn=3" in svg and "transformer_blocks[0..4] (LinearBlock)" in svg
    pytest.importorskip("matplotlib")
    png = Path(report.save(tmp_path / "regions.png"))
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(ValueError, match=r"\.svg or \.png"):
        report.save(tmp_path / "regions.jpg")


def test_summary_before_any_call():
    c = dit_cache_fx.compile(ToyDiT(), cache="F1B0")
    assert "no cache region yet: call the model" in str(dit_cache_fx.summary(c))


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
