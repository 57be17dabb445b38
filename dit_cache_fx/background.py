"""Regional mode's outer graph compiled by inductor in a child process while it runs here as its FX code
(`compile(..., regional=True, outer="auto")`, the default): the first call as short as with the glue
uncompiled, later calls at the compiled graph's speed.

    call 1       the outer graph runs as its FX code; each block's code compiles on its first call
    call 2       the graph and its inputs' fake values are pickled (torch's `GraphPickler`) and a child
                 process starts:  python -m dit_cache_fx.background <payload> <artifact>
                 it compiles them with inductor (`standalone_compile`) and saves the result
    calls 2..k   still FX code; each call asks whether the child is done (one `waitpid`)
    call k+1     the child is done: its artifact is loaded (inductor's saved code, no compilation) and
                 becomes the graph's compiled callable — below Dynamo, so no recompile, no graph break

The swap happens at a call boundary, so each call runs one version of the glue throughout; the two
differ by float rounding only (inductor's fusions). Not started for graphs with dynamic shapes (the
artifact would be specialised) or with a process group (ranks would swap at different calls). A failed
child leaves the graph as FX code, said once in a warning.
"""

from __future__ import annotations

import logging
import os
import pickle
import shutil
import subprocess
import sys
import tempfile
import threading
import warnings
import weakref
from collections.abc import Callable

import torch
from torch.fx import GraphModule

from . import _compat
from .runtime import regional

log = logging.getLogger(__name__)

__all__ = ["OuterCompile", "not_eligible"]


def not_eligible(values: list, group: str | None) -> str | None:
    """Why the outer graph with these input values cannot be compiled in the background (None: it can)."""
    if group is not None:
        return "a process group shares the decision (ranks would swap at different calls)"
    for v in values:
        if _compat.is_tensor_subclass(v):
            return "a tensor-subclass input (quantized weights?) the child could not rebuild"
        dims = (*v.shape, *v.stride()) if isinstance(v, torch.Tensor) else (v,) if isinstance(v, torch.SymInt) else ()
        if any(isinstance(d, torch.SymInt) for d in dims):
            return "dynamic shapes (the compiled code would be specialised to one size)"
    return None


class _Child:
    """The child process and its files (what the finalizer cleans up; it refers to no OuterCompile)."""

    def __init__(self) -> None:
        self.proc: subprocess.Popen | None = None
        self.dir: str | None = None

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        if self.dir is not None:
            shutil.rmtree(self.dir, ignore_errors=True)
            self.dir = None


class OuterCompile:
    """One outer graph's background compile; `step()` at the start of each of the runner's calls."""

    def __init__(self, gm: GraphModule, values: list, options: dict,
                 on_done: Callable[[Callable | None], None]) -> None:
        self.gm, self.values, self.options = gm, values, options
        self.on_done = on_done  # takes the compiled callable (the runner swaps it in), or None when it failed
        self.calls = 0
        self.done = False
        self.failure: str | None = None
        self._lock = threading.Lock()
        self._child = _Child()
        weakref.finalize(self, _Child.close, self._child)

    def step(self) -> None:
        """Per call while not done: start the child on the second call, then poll it; swap when it is done."""
        if self.done or not self._lock.acquire(blocking=False):  # finished, or another thread is at it
            return
        try:
            self.calls += 1
            if self._child.proc is None:
                if self.calls >= 2:
                    self._start()
            elif self._child.proc.poll() is not None:
                self._finish()
        finally:
            self._lock.release()

    def wait(self, timeout: float | None = None) -> bool:
        """Start the child if it is not running, wait for it (at most `timeout` seconds) and swap its code in.
        True when the compiled code is in place."""
        with self._lock:
            if not self.done and self._child.proc is None:
                self._start()
            if self.done:
                return self.failure is None
            try:
                self._child.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                return False
            self._finish()
            return self.failure is None

    def _start(self) -> None:
        child = self._child
        try:
            blocks = regional.output_specs(set(regional.block_calls(self.gm)))
            payload = {"graph": _compat.pickle_graph(self.gm, self.values), "blocks": blocks,
                       "options": self.options, "modules": sorted(m for m in sys.modules if m.startswith(__package__))}
        except Exception as e:  # e.g. a tensor subclass input the pickler cannot describe
            self._fail(f"the graph cannot be pickled ({type(e).__name__}: {_first_line(e)})", warn=False)
            return
        child.dir = tempfile.mkdtemp(prefix="dit_cache_fx_outer_")
        path = os.path.join(child.dir, "payload.pkl")
        with open(path, "wb") as f:
            pickle.dump(payload, f)
        self.gm = self.values = None  # the child has them now
        env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": _compat.inductor_cache_dir(),
               "TORCHINDUCTOR_COMPILE_THREADS": "1",
               "PYTHONPATH": os.pathsep.join(filter(None, [_package_root(), os.environ.get("PYTHONPATH")]))}
        with open(os.path.join(child.dir, "log.txt"), "wb") as out:
            child.proc = subprocess.Popen([*worker_command(), path, self._artifact()], stdout=out,
                                          stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env)
        log.info("dit_cache_fx: compiling the graph around the blocks in the background (pid %d)", child.proc.pid)

    def _finish(self) -> None:
        child = self._child
        rc = child.proc.returncode
        if rc != 0 or not os.path.exists(self._artifact()):
            self._fail(f"the compiling process exited with status {rc}: {_tail(child.dir)}", warn=True)
            return
        try:
            compiled = _compat.load_artifact(self._artifact())
        except Exception as e:
            self._fail(f"its result did not load ({type(e).__name__}: {_first_line(e)})", warn=True)
            return
        self.done = True
        child.close()
        self.on_done(compiled)
        log.info("dit_cache_fx: the graph around the blocks now runs as inductor's code")

    def _fail(self, why: str, warn: bool) -> None:
        self.done, self.failure = True, why
        self._child.close()
        self.gm = self.values = None
        self.on_done(None)
        message = (f"dit_cache_fx: compiling the graph around the blocks in the background failed: {why}; it keeps "
                   "running as its Python code (compile(..., outer=\"inductor\") compiles it in this process)")
        if warn:
            warnings.warn(message, stacklevel=4)
        else:
            log.info(message)

    def _artifact(self) -> str:
        return os.path.join(self._child.dir, "outer.bin")


def worker_command() -> list[str]:
    """The child's command line, before its two arguments (the payload and where to save the artifact)."""
    return [sys.executable, "-m", f"{__package__}.background"]


def _package_root() -> str:
    return os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _first_line(e: BaseException) -> str:
    return str(e).splitlines()[0] if str(e) else ""


def _tail(directory: str | None) -> str:
    try:
        with open(os.path.join(directory or "", "log.txt"), errors="replace") as f:
            lines = [ln.strip() for ln in f if ln.strip()]
    except OSError:
        return "no output"
    return lines[-1] if lines else "no output"


def main(argv: list[str]) -> int:
    """The child: compile the pickled outer graph and save inductor's artifact."""
    import importlib

    payload_path, artifact = argv
    with open(payload_path, "rb") as f:
        payload = pickle.load(f)
    for name in payload["modules"]:  # the ops and in-graph functions the graph names
        importlib.import_module(name)
    from .runtime import registry

    regional.adopt_output_specs(payload["blocks"])
    gm, values, mode = _compat.unpickle_graph(payload["graph"])
    with _compat.compile_caches_for(registry.IN_GRAPH, registry.source_version()):
        _compat.compile_artifact(gm, values, mode, payload["options"], artifact + ".part")
    os.replace(artifact + ".part", artifact)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
