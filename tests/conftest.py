import os
import sys

import pytest
import torch

from dit_cache_fx import _compat

sys.path.insert(0, os.path.dirname(__file__))

torch.set_num_threads(min(2, os.cpu_count() or 1))


@pytest.fixture(autouse=True)
def _fresh_dynamo_counters():
    from torch._dynamo.utils import counters

    counters.clear()
    if not _compat.isolates_recompiles():  # torch < 2.13: no test sees the Dynamo entries of an earlier one
        _compat.reset_dynamo()
    yield
