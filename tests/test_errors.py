"""Bad input gets an error that names the problem."""

import pytest
import torch
from torch import nn

import dit_cache_fx

from toy import NoBlocks, ToyDiT


def _call(model, t=5.0):
    with torch.no_grad():
        return model(torch.randn(1, 8, 16), torch.tensor([t]))


def test_fn_bn_larger_than_every_block_list_fails_in_compile():
    with pytest.raises(dit_cache_fx.CachePlanError, match=r"Fn=3 \+ Bn=1 leaves no middle blocks .*4 blocks"):
        dit_cache_fx.compile(ToyDiT(num_layers=4), cache="F3B1")
    with pytest.raises(dit_cache_fx.CachePlanError, match=r"no block list named \['blocks'\]"):
        dit_cache_fx.compile(ToyDiT(), cache={"blocks": "F1B0"})


class _TwoLists(ToyDiT):
    """Two block lists of 4 that are *not* chained (a top-level op between them): runs of 4, not 8."""

    def __init__(self):
        super().__init__()
        self.more_blocks = torch.nn.ModuleList(type(self.transformer_blocks[0])(16) for _ in range(4))

    def forward(self, hidden_states, timestep):
        h = self.proj_in(hidden_states)
        temb = timestep.float().view(-1, 1, 1) / 1000
        for block in self.transformer_blocks:
            h = block(h, temb)
        h = torch.tanh(h)
        for block in self.more_blocks:
            h = block(h, temb)
        return self.proj_out(h)


def test_fn_bn_larger_than_the_traced_runs_fails_at_the_first_call_as_itself():
    compiled = dit_cache_fx.compile(_TwoLists(), cache="F3B1")  # 8 blocks in all: compile() cannot tell
    with pytest.raises(dit_cache_fx.NoBlockRunError, match=r"transformer_blocks\[0:4\]: Fn=3 \+ Bn=1 leaves no"):
        _call(compiled)


def test_no_repeated_blocks():
    compiled = dit_cache_fx.compile(NoBlocks(), cache="F1B0")
    with pytest.raises(dit_cache_fx.NoBlockRunError, match="no cacheable run of repeated transformer blocks"):
        _call(compiled)


def test_no_block_run_names_skip_marks_left_by_an_earlier_compile(monkeypatch):
    """Dynamo skipping code an earlier torch.compile marked (cache-dit's wrapped model compiled in the same
    process does it to Flux's blocks, `bench/bench_peer.py`): the error says what clears it."""
    from dit_cache_fx import _compat

    monkeypatch.setattr(_compat, "graph_break_reasons", lambda: ["Attempted to call function marked as skipped"])
    compiled = dit_cache_fx.compile(NoBlocks(), cache="F1B0")
    with pytest.raises(dit_cache_fx.NoBlockRunError, match=r"marked as skipped.*torch\._dynamo\.reset\(\) before"):
        _call(compiled)


def test_no_repeated_blocks_opt_in_plain_compile():
    model = NoBlocks()
    compiled = dit_cache_fx.compile(model, cache="F1B0", on_no_blocks="compile")
    x, t = torch.randn(1, 8, 16), torch.tensor([5.0])
    with pytest.warns(UserWarning, match="compiled without a cache"), torch.no_grad():
        out = compiled(x, t)
    torch.testing.assert_close(out, model(x, t))


class _Sigma(ToyDiT):
    def forward(self, hidden_states, sigma):  # the timestep under another name
        return super().forward(hidden_states, sigma)


class _NoiseLevel(ToyDiT):
    def forward(self, hidden_states, noise_level):  # a name that says nothing, and no sinusoidal embedding
        return super().forward(hidden_states, noise_level)


def test_timestep_found_or_named_in_the_error():
    found = dit_cache_fx.compile(_Sigma(), cache="F1B0")
    _call(found)
    assert dit_cache_fx.summary(found).num_steps == 1
    missing = dit_cache_fx.compile(_NoiseLevel(), cache="F1B0")
    with pytest.raises(dit_cache_fx.CachePlanError, match=r"timestep input .* among the inputs \['hidden_states', "
                       r"'noise_level'\]; pass CacheConfig\(timestep_arg="):
        _call(missing)
    named = dit_cache_fx.compile(_NoiseLevel(), cache=dit_cache_fx.CacheConfig(Fn_compute_blocks=1,
                                                                               timestep_arg="noise_level"))
    _call(named)
    assert dit_cache_fx.summary(named).num_steps == 1


@pytest.mark.parametrize("kwargs, message", [
    (dict(backend="inductor"), "chooses the backend"),
    (dict(on_no_blocks="ignore"), "on_no_blocks"),
    (dict(cache="F8Q"), "cannot parse 'Q'"),
    (dict(cache=8), "spec string"),
    (dict(outer="inductor"), "pass regional=True too"),
    (dict(regional=True, outer="cuda"), "outer= must be one of"),
])
def test_bad_arguments(kwargs, message):
    with pytest.raises((dit_cache_fx.DitCacheError, TypeError), match=message):
        dit_cache_fx.compile(ToyDiT(), **kwargs)


def test_configure_structural_change_rejected():
    compiled = dit_cache_fx.compile(ToyDiT(), cache="F1B0")
    with pytest.raises(ValueError, match="Fn_compute_blocks"):
        dit_cache_fx.configure(compiled, "F2B0")
    with pytest.raises(TypeError, match="not compiled by dit_cache_fx"):
        dit_cache_fx.summary(nn.Linear(2, 2))


@pytest.mark.parametrize("dynamic", [False, True])
def test_shape_change_mid_generation_is_an_error(dynamic):
    """The tokens may not change inside a generation; the batch may (CFG batched for part of the steps): the
    generation goes on, the first call at the new batch computes, caching resumes after it."""
    compiled = dit_cache_fx.compile(ToyDiT(), cache="F1B0_W1_R1.0", dynamic=dynamic)
    with torch.no_grad():
        for s in range(4):
            compiled(torch.randn(1, 8, 16), torch.tensor([100.0 - s]))
        assert dit_cache_fx.summary(compiled).cached_steps == [1, 2, 3]
        with pytest.warns(UserWarning, match="another graph") if not dynamic else _nothing():
            for s in range(4, 7):
                compiled(torch.randn(2, 8, 16), torch.tensor([100.0 - s]))  # batch changed mid-generation
        s = dit_cache_fx.summary(compiled)
        assert s.num_steps == 7 and s.cached_steps == [1, 2, 3, 5, 6]
        with pytest.raises(dit_cache_fx.ShapeChangedError, match=r"changed shape from \[2, 8, 16\] to \[2, 12, 16\] "
                           "at step 7"):
            compiled(torch.randn(2, 12, 16), torch.tensor([93.0]))  # tokens changed mid-generation
        # a new generation at the new shape is fine, and starts from fresh state
        dit_cache_fx.reset(compiled)
        for s in range(3):
            compiled(torch.randn(2, 12, 16), torch.tensor([100.0 - s]))
    s = dit_cache_fx.summary(compiled)
    assert s.num_steps == 3 and s.cached_steps == [1, 2]


def _nothing():
    import contextlib

    return contextlib.nullcontext()


def test_mode_and_options_become_inductor_config():
    compiled = dit_cache_fx.compile(ToyDiT(), cache="F1B0", mode="max-autotune-no-cudagraphs",
                                    options={"epilogue_fusion": False})
    assert compiled.__dict__["_dit_cache_fx"].inductor_options == {
        "max_autotune": True, "coordinate_descent_tuning": True, "epilogue_fusion": False}


def test_plan_errors_raised_while_dynamo_compiles_reach_the_user_as_themselves(monkeypatch):
    from dit_cache_fx.passes import pipeline

    def fail(*args, **kwargs):
        raise dit_cache_fx.CachePlanError("the planner says no")

    monkeypatch.setattr(pipeline, "find_runs", fail)
    compiled = dit_cache_fx.compile(ToyDiT(), cache="F1B0")
    with pytest.raises(dit_cache_fx.CachePlanError, match="^the planner says no$") as info:
        _call(compiled)
    assert type(info.value) is dit_cache_fx.CachePlanError  # not Dynamo's BackendCompilerFailed
    assert "report a bug" not in str(info.value) and info.value.__suppress_context__


def test_context_parallel_on_torch_before_2_13_fails_early(monkeypatch):
    # diffusers' enable_parallelism leaves a ContextParallelConfig on the model (faked here: no process group)
    from types import SimpleNamespace

    from dit_cache_fx import _compat

    model = ToyDiT()
    mesh = SimpleNamespace(get_group=lambda: SimpleNamespace(group_name="cp"))
    model._parallel_config = SimpleNamespace(context_parallel_config=SimpleNamespace(
        _flattened_mesh=mesh, ring_degree=1, ulysses_degree=2))
    monkeypatch.setattr(_compat, "torch_version", lambda: (2, 11))
    with pytest.raises(dit_cache_fx.UnsupportedTorchError, match=r"torch >= 2\.13"):
        dit_cache_fx.compile(model, cache="F1B0_W1_R1.0")
    monkeypatch.setattr(_compat, "torch_version", lambda: (2, 13))
    dit_cache_fx.compile(model, cache="F1B0_W1_R1.0")  # compiles (nothing traced yet)
