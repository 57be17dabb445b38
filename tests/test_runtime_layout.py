"""runtime/layout.py: state declared once — allocation, flat order and names, reinit, the state table."""

import pytest
import torch

from dit_cache_fx.config import FOCA
from dit_cache_fx.runtime.layout import (
    BRANCHES,
    COUNTERS,
    RegionDims,
    RegionState,
    StepContext,
    stack_depth,
    state_group,
    state_table,
)


def _dims(orders=(2, 0)) -> RegionDims:
    return RegionDims((1, 8, 4), torch.float32, ((1, 8, 4), (1, 3, 4)), (torch.float32, torch.bfloat16), orders)


def test_allocate_follows_the_declared_slots():
    st = RegionState.allocate("cpu", _dims())
    assert st.anchor.shape == (BRANCHES, 1, 8, 4)
    assert st.factors[0].shape == (BRANCHES, 3, 1, 8, 4)  # TaylorSeer order 2: residual + 2 differences
    assert st.factors[1].shape == (BRANCHES, 1, 1, 3, 4) and st.factors[1].dtype == torch.bfloat16
    assert (st.gen == -1).all() and torch.isnan(st.log).all()
    assert stack_depth(FOCA) > 1 and state_group(_dims()) is RegionState


def test_flat_names_every_tensor_once_in_slot_order():
    st = RegionState.allocate("cpu", _dims())
    names = [n for n, _ in st.flat()]
    fields = [f.name for f in RegionState.slots()]
    assert names[: fields.index("factors")] == fields[: fields.index("factors")]
    assert "factors_0" in names and "factors_1" in names and len(names) == len(set(names))
    assert st.tensor("factors_1") is st.factors[1]
    with pytest.raises(KeyError, match="factors_2"):
        st.tensor("factors_2")
    assert set(COUNTERS) <= set(names)


def test_reinit_restores_every_initial_value_in_place():
    ctx = StepContext.allocate("cpu")
    before = {n: t.clone() for n, t in ctx.flat()}
    kept = {n: t for n, t in ctx.flat()}
    for _, t in ctx.flat():
        t.fill_(7)
    ctx.reinit()
    for n, t in ctx.flat():
        assert t is kept[n]
        torch.testing.assert_close(t, before[n], rtol=0, atol=0, equal_nan=True)


def test_the_state_table_documents_every_slot():
    table = state_table()
    for group in (StepContext, RegionState):
        assert all(f.name in table for f in group.slots())
