"""runtime/store.py: per-thread step contexts and per-shape states, the shape rules, release."""

import threading

import pytest
import torch

from dit_cache_fx.config import CacheConfig
from dit_cache_fx.errors import ShapeChangedError
from dit_cache_fx.runtime.layout import RegionDims
from dit_cache_fx.runtime.store import StateStore

CPU = torch.device("cpu")


def _dims(*hidden: int) -> RegionDims:
    return RegionDims(hidden, torch.float32, (hidden,), (torch.float32,), (0,))


def test_states_per_shape_keep_at_most_max_shapes_and_bump_the_epoch():
    store = StateStore(None, max_shapes=2)
    a = store.state("r", _dims(1, 8, 4), CPU)
    assert store.state("r", _dims(1, 8, 4), CPU) is a  # one state per shape
    store.state("r", _dims(1, 16, 4), CPU)
    epoch = store.epoch
    store.state("r", _dims(1, 32, 4), CPU)  # a third shape drops the least recent one
    assert store.epoch == epoch + 1 and len(store.states("r")) == 2
    assert store.state("r", _dims(1, 8, 4), CPU) is not a


def test_a_new_latents_shape_mid_generation_is_refused_but_a_new_batch_is_not():
    store = StateStore(None)
    ctx = store.context(CPU)
    store.state("r", _dims(1, 8, 4), CPU)
    ctx.step.fill_(3)
    store.state("r", _dims(2, 8, 4), CPU)  # CFG batched for part of the steps: fine
    with pytest.raises(ShapeChangedError, match=r"changed shape from \[2, 8, 4\] to \[2, 16, 4\] at step 3"):
        store.state("r", _dims(2, 16, 4), CPU)


def test_note_call_restarts_the_state_of_a_shape_not_seen_last():
    store = StateStore(None)
    a, b = store.state("r", _dims(1, 8, 4), CPU), store.state("r", _dims(2, 8, 4), CPU)
    for s in (a, b):
        s.gen.fill_(5)
    store.note_call("r", _dims(1, 8, 4), a, store.mine())
    store.note_call("r", _dims(2, 8, 4), b, store.mine())  # a second shape: its counters count as never used
    assert (a.gen == 5).all() and (b.gen == -1).all()


def test_each_thread_has_its_own_context_and_release_frees_them():
    store = StateStore(None)
    mine = store.context(CPU)
    theirs = []
    t = threading.Thread(target=lambda: theirs.append(store.context(CPU)))
    t.start()
    t.join()
    assert theirs[0] is not mine and store.context(CPU) is mine
    store.release()
    assert store.threads == {} and store.context(CPU) is not mine


def test_policy_is_shared_and_configure_reloads_it():
    store = StateStore(None)
    pol = store.policy("r", CacheConfig(residual_diff_threshold=0.1), CPU)
    assert store.policy("r", CacheConfig(residual_diff_threshold=0.9), CPU) is pol  # the first config wins
    assert float(pol.threshold) == pytest.approx(0.1)
    store.configure("r", CacheConfig(residual_diff_threshold=0.3))
    assert float(pol.threshold) == pytest.approx(0.3)
