"""The package's exceptions: all catchable as `DitCacheError` (a ValueError)."""


class DitCacheError(ValueError):
    """Base class of dit_cache_fx's errors."""


class CachePlanError(DitCacheError):
    """The graph cannot be cut as asked (bad Fn/Bn for the model's runs, no timestep, unsupported dataflow)."""


class NoBlockRunError(DitCacheError):
    """The traced model has no run of repeated transformer blocks to cache."""


class ShapeChangedError(DitCacheError):
    """The latents changed shape in the middle of a generation."""


class InferenceOnlyError(DitCacheError):
    """A call asked for gradients (grad mode on and an input requiring grad): the cache is inference only."""


class UnsupportedWeightsError(DitCacheError):
    """A cache region reads tensors the whole-graph mode cannot pass into its `torch.cond` (a tensor subclass
    without the `__tensor_flatten__` protocol); `compile(..., regional=True)` keeps them outside the cond."""


class OffloadError(DitCacheError):
    """Offloading (or another diffusers layer hook) the cache cannot run around the compiled code: accelerate's
    sequential offload, group offloading with streams, hooks enabled after the first call; the message names
    what works."""


class UnsupportedTorchError(DitCacheError):
    """A feature needs a newer torch than the one installed (the message names the version)."""
