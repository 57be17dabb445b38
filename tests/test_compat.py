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
