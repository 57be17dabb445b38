"""`_compat.DynamoFlags`: the Dynamo flags our traces need are set while Dynamo compiles inside one of our calls,
and only then (process-wide config: the user's other models must not see them), also after `torch._dynamo.reset()`
(which drops Dynamo's compile callbacks)."""

import torch
import torch._dynamo.config as dynamo_config

from dit_cache_fx import _compat


def test_flags_are_set_while_tracing_only():
    flags = _compat.DynamoFlags(capture_scalar_outputs=True)
    seen = []

    def probe(gm, example_inputs):
        seen.append(dynamo_config.capture_scalar_outputs)
        return gm.forward

    before = dynamo_config.capture_scalar_outputs
    for k in range(2):
        if k:
            torch._dynamo.reset()  # clears Dynamo's callbacks: the next call installs ours again
        f = torch.compile(lambda x, k=k: x + k, backend=probe)
        with flags:
            assert dynamo_config.capture_scalar_outputs == before  # not outside a compile
            f(torch.ones(2))
            f(torch.ones(2))  # no compile: nothing set
        assert dynamo_config.capture_scalar_outputs == before
        g = torch.compile(lambda x, k=k: x - k, backend=probe)
        g(torch.ones(2))  # a compile outside our calls sees the user's value
    assert seen == [True, before, True, before]


def test_a_users_value_comes_back():
    flags = _compat.DynamoFlags(capture_scalar_outputs=True, capture_dynamic_output_shape_ops=True)
    f = torch.compile(lambda x: x * 3, backend="eager")
    with torch._dynamo.config.patch(capture_dynamic_output_shape_ops=True):
        with flags:
            f(torch.ones(3))
        assert dynamo_config.capture_dynamic_output_shape_ops is True
        assert dynamo_config.capture_scalar_outputs is False


def test_a_compile_while_a_call_is_in_flight_in_another_thread_sees_the_flags():
    """Dynamo announces only the outermost of overlapping compiles, so a compile that starts while one of our
    calls is in flight anywhere sets the flags: our call's own trace may be the one it does not announce."""
    import threading

    flags = _compat.DynamoFlags(capture_scalar_outputs=True)
    inside, done, seen = threading.Event(), threading.Event(), []

    def call():
        with flags:
            inside.set()
            done.wait(60)

    def probe(gm, example_inputs):
        seen.append(dynamo_config.capture_scalar_outputs)
        return gm.forward

    t = threading.Thread(target=call)
    t.start()
    try:
        assert inside.wait(60)
        torch.compile(lambda x: x * 5, backend=probe)(torch.ones(2))
    finally:
        done.set()
        t.join(60)
    assert seen == [True] and dynamo_config.capture_scalar_outputs is False
