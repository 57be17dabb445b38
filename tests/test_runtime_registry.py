"""runtime/registry.py: one list of the Python functions compiled graphs call, and the hash that keys the caches."""

import dit_cache_fx  # noqa: F401  (imports the modules that register)
from dit_cache_fx.runtime import diff, policy, registry, step, taylor


def test_in_graph_functions_are_registered_once_from_their_modules():
    names = {f"{f.__module__}.{f.__name__}" for f in registry.IN_GRAPH}
    for fn in (policy.decide, policy.settle, taylor.pick, taylor.store, step.classify_pending, diff.residual_diff):
        assert f"{fn.__module__}.{fn.__name__}" in names
    assert len(names) == len(registry.IN_GRAPH)


def test_source_version_is_stable_and_names_the_package():
    v = registry.source_version()
    assert v.startswith("dit_cache_fx-") and len(v) == len("dit_cache_fx-") + 16
    assert registry.source_version() == v
