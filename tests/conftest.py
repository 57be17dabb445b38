import os
import sys

import pytest
import torch

from dit_cache_fx import _compat

sys.path.insert(0, os.path.dirname(__file__))

torch.set_num_threads(min(2, os.cpu_count() or 1))


def _module_shares_fixtures(request) -> bool:
    """The test's module has a module-scoped fixture (a model compiled once for several of its tests)."""
    markers = (getattr(v, "_fixture_function_marker", None) for v in vars(request.module).values())
    return any(m is not None and m.scope != "function" for m in markers)


@pytest.fixture(autouse=True, scope="module")
def _fresh_dynamo_per_module():
    if not _compat.isolates_recompiles():  # torch < 2.13: no module sees the Dynamo entries of an earlier one
        _compat.reset_dynamo()
    yield


@pytest.fixture(autouse=True)
def _fresh_dynamo_counters(request):
    from torch._dynamo.utils import counters

    counters.clear()
    # torch < 2.13: nor a test those of an earlier test, unless its module compiles a shared model once
    if not _compat.isolates_recompiles() and not _module_shares_fixtures(request):
        _compat.reset_dynamo()
    yield
