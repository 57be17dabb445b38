"""The README as documentation that cannot rot: every Python block not marked illustrative runs as copied
(in one process, in order), and the tables generated from the declarations match them."""

import re
import subprocess
import sys
from pathlib import Path

from dit_cache_fx.config import grammar_table
from dit_cache_fx.runtime.layout import state_table

README = Path(__file__).resolve().parents[1] / "README.md"
BLOCK = re.compile(r"(<!-- illustrative[^>]*-->\n)?```python\n(.*?)```", re.S)


def blocks() -> tuple[list[str], list[str]]:
    runnable, illustrative = [], []
    for marker, code in BLOCK.findall(README.read_text()):
        (illustrative if marker else runnable).append(code)
    return runnable, illustrative


def test_readme_python_blocks_run_as_copied(tmp_path):
    runnable, illustrative = blocks()
    assert len(runnable) >= 2 and illustrative  # the illustrative ones name the test that runs their equivalent
    for marker in re.findall(r"<!-- illustrative: ([^>]*)-->", README.read_text()):
        assert re.search(r"tests/test_\w+\.py", marker), marker
    script = "\n".join(f"exec(compile({code!r}, 'README block {i}', 'exec'))" for i, code in enumerate(runnable))
    subprocess.run([sys.executable, "-c", script], check=True, cwd=tmp_path, timeout=900)


def test_readme_tables_are_the_generated_ones():
    text = README.read_text()
    assert grammar_table() in text
    assert state_table() in text
