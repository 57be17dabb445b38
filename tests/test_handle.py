"""handle.py: where graph inputs come from in the call (`InputPath`, from Dynamo's source names through
`_compat`), and the per-thread call state."""

import inspect
import threading
from types import SimpleNamespace

import torch

import dit_cache_fx
from dit_cache_fx import _compat
from dit_cache_fx.handle import InputPath

from graphs import dynamo_graph
from helpers import handle


def _model(x, t, extra=None):
    return x * t + (extra["bias"][0] if extra is not None else 0)


def test_input_paths_fetch_the_value_from_the_call():
    x, t, extra = torch.randn(2, 3), torch.tensor(0.5), {"bias": [torch.ones(3)]}
    gm = dynamo_graph(_model, x, t, extra)
    sig = inspect.signature(_model)
    paths = [InputPath.of(p) for p in gm.graph.nodes if p.op == "placeholder"]
    by_arg = {p.argument(list(sig.parameters)): p for p in paths if p is not None}
    assert set(by_arg) == {"x", "t", "extra"}
    assert by_arg["extra"].keys[1:] == ("bias", 0)
    args, kwargs = (x,), {"t": t, "extra": extra}
    assert by_arg["extra"].fetch(sig, args, kwargs) is extra["bias"][0]
    assert by_arg["t"].fetch(sig, args, kwargs) is t


def test_dynamo_source_names_parse_behind_compat():
    def node(name):  # the one attribute _compat reads off a Dynamo placeholder
        return SimpleNamespace(_dynamo_source=SimpleNamespace(name=name))

    parsed = [_compat.dynamo_input_source(node(n)) for n in ("L['kwargs']['t']", "L['args'][1]", "L['t']", "G['x']")]
    assert parsed[:3] == [("kwargs", ("t",)), ("args", (1,)), ("t", ())] and parsed[3] is None


def test_each_thread_has_its_own_call_state():
    from toy import ToyDiT

    compiled = dit_cache_fx.compile(ToyDiT(), cache="F1B0")
    h = handle(compiled)
    mine = h.begin_call((), {})
    seen = []
    t = threading.Thread(target=lambda: seen.append(h.call))
    t.start()
    t.join()
    assert seen[0] is not mine and h.call is mine and mine.pending
