"""`CacheConfig`: DBCache (+ TaylorSeer) settings, and the spec-string grammar.

Grammar (tokens joined by `_`, any order, each at most once, all optional):

    F<int>   Fn: first blocks always computed; their residual drives the decision   (default 8)
    B<int>   Bn: last blocks always computed                                        (default 0)
    W<int>   warmup: steps range(0, W, I) are always computed                       (default 8)
    I<int>   warmup interval                                                        (default 1)
    M<int>   max cached steps per branch; 0 or -1 = unlimited                       (default unlimited)
    MC<int>  max consecutive cached steps; 0 or -1 = unlimited                      (default unlimited)
    R<float> residual diff threshold; cache when rel-L1 diff < R; R <= 0 never caches (default 0.08)
    T<int>   TaylorSeer order for the cached residual; 0 = off                       (default 0)
    ET<0|1>  TaylorSeer on the encoder stream too                                    (default 1)
    CFG<0|1> force separate-CFG off/on (default: detected from the timesteps)
    SCM<01…> steps computation mask: 1 = always compute that step, 0 = may cache     (default none)
    SCM<slow|medium|fast|ultra> with N28: cache-dit's preset masks for 28 steps
    static|dynamic  what a mask 0 means: cache unconditionally, or the usual decision (default dynamic)

Letters may be glued (`F8B0`, `W8I1M0MC3`). cache-dit's printed names parse too: a leading `DBCache`,
`T<0|1>O<order>` (TaylorSeer on/off and order), and suffixes `_S<n>` (stats), `_N<n>`; there `M0`/`MC0`
mean unlimited, as here.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass

_TOKEN = re.compile(r"(MC|CFG|ET|[FBWIMRTOSN])(-?\d+(?:\.\d*)?(?:e-?\d+)?)")
_IGNORED_PREFIXES = ("DBCache", "DBCACHE", "DB")


@dataclass(frozen=True)
class CacheConfig:
    """DBCache settings. Each field trades speed against fidelity to the uncached model.

    Attributes:
        Fn_compute_blocks: first blocks of a run always computed. More blocks → a more reliable
            similarity signal and closer outputs, but less compute skipped on cached steps.
        Bn_compute_blocks: last blocks always computed; they refine the approximated state.
        residual_diff_threshold: cache a step when the relative L1 change of the Fn residual since the
            last computed step is below this. Higher → more cached steps, lower quality. <= 0 never caches.
        max_warmup_steps, warmup_interval: steps `range(0, W, I)` are always computed.
        max_cached_steps: cap on cached steps per generation and CFG branch (-1 = unlimited).
        max_continuous_cached_steps: at most this many consecutive cached steps, then one computed
            step (-1 = unlimited).
        taylorseer_order: forecast the cached residual with a Taylor series of this order (0 = off):
            better approximations on smoothly changing residuals, k+1 residual-sized buffers per stream.
        taylorseer_encoder: also forecast the encoder stream's residual (else it is reused as is).
        enable_separate_cfg: None = detect (same timestep seen twice in a step), True/False = force.
        steps_computation_mask: per-step 1 (always compute) / 0 (cache allowed); steps past its end are
            decided as usual. Warmup is cut to the mask's leading run of 1s.
        steps_computation_policy: "dynamic" (a 0 step still needs the diff test, M and MC) or "static"
            (a 0 step is cached unconditionally: a fixed schedule, no diff computed).
        timestep_arg: name of the model input that carries the timestep (None = `timestep`/`timesteps`).
    """

    Fn_compute_blocks: int = 8
    Bn_compute_blocks: int = 0
    residual_diff_threshold: float = 0.08
    max_warmup_steps: int = 8
    warmup_interval: int = 1
    max_cached_steps: int = -1
    max_continuous_cached_steps: int = -1
    taylorseer_order: int = 0
    taylorseer_encoder: bool = True
    enable_separate_cfg: bool | None = None
    steps_computation_mask: tuple[int, ...] | None = None
    steps_computation_policy: str = "dynamic"
    timestep_arg: str | None = None

    def __post_init__(self) -> None:
        _check(self.Fn_compute_blocks >= 1, "Fn_compute_blocks", self.Fn_compute_blocks, ">= 1")
        _check(self.Bn_compute_blocks >= 0, "Bn_compute_blocks", self.Bn_compute_blocks, ">= 0")
        _check(self.max_warmup_steps >= 0, "max_warmup_steps", self.max_warmup_steps, ">= 0")
        _check(self.warmup_interval >= 1, "warmup_interval", self.warmup_interval, ">= 1")
        for name in ("max_cached_steps", "max_continuous_cached_steps"):
            value = getattr(self, name)
            _check(value == -1 or value >= 1, name, value,
                   "-1 (unlimited) or >= 1; to never cache use residual_diff_threshold=0")
        _check(0 <= self.taylorseer_order <= 4, "taylorseer_order", self.taylorseer_order, "in 0..4")
        _check(self.steps_computation_policy in ("dynamic", "static"), "steps_computation_policy",
               self.steps_computation_policy, "'dynamic' or 'static'")
        mask = self.steps_computation_mask
        if mask is not None:
            _check(isinstance(mask, tuple) and 0 < len(mask) <= MAX_MASK_STEPS and set(mask) <= {0, 1},
                   "steps_computation_mask", mask, f"a tuple of 0/1 of length 1..{MAX_MASK_STEPS}")

    @property
    def effective_warmup(self) -> int:
        """Warmup steps, cut to the mask's leading run of 1s (cache-dit's rule)."""
        mask = self.steps_computation_mask
        if not mask:
            return self.max_warmup_steps
        lead = next((i for i, m in enumerate(mask) if m == 0), len(mask))
        return min(self.max_warmup_steps, lead)

    @classmethod
    def parse(cls, spec: str) -> CacheConfig:
        """Parse a spec string such as `"F8B0_W8I1M0MC3_R0.08_T1"` (see the module docstring)."""
        if not isinstance(spec, str) or not spec.strip():
            raise ValueError(f"cache spec must be a non-empty string, got {spec!r}")
        values: dict[str, str] = {}
        for part in spec.strip().split("_"):
            for prefix in _IGNORED_PREFIXES:
                if part.startswith(prefix) and (len(part) == len(prefix) or not part[len(prefix)].isdigit()):
                    part = part[len(prefix):]
                    break
            if part.startswith("SCM") or part in ("static", "dynamic"):
                key, val = ("SCM", part[3:]) if part.startswith("SCM") else ("policy", part)
                if key in values:
                    raise ValueError(f"cache spec {spec!r}: token {key!r} given twice")
                values[key] = val
                continue
            pos = 0
            for m in _TOKEN.finditer(part):
                if m.start() != pos:
                    break
                key, val = m.groups()
                if key in values:
                    raise ValueError(f"cache spec {spec!r}: token {key!r} given twice")
                values[key] = val
                pos = m.end()
            if pos != len(part):
                raise ValueError(
                    f"cache spec {spec!r}: cannot parse {part[pos:]!r} in {part!r}; expected tokens like "
                    "F8 B0 W8 I1 M0 MC3 R0.08 T1 CFG1 joined by '_' (see dit_cache_fx.config)")
        return cls(**_fields_from_tokens(spec, values))

    def __str__(self) -> str:
        s = (f"F{self.Fn_compute_blocks}B{self.Bn_compute_blocks}_W{self.max_warmup_steps}I{self.warmup_interval}"
             f"M{max(0, self.max_cached_steps)}MC{max(0, self.max_continuous_cached_steps)}"
             f"_R{self.residual_diff_threshold:g}")
        if self.taylorseer_order:
            s += f"_T{self.taylorseer_order}" + ("" if self.taylorseer_encoder else "_ET0")
        if self.enable_separate_cfg is not None:
            s += f"_CFG{int(self.enable_separate_cfg)}"
        if self.steps_computation_mask:
            s += "_SCM" + "".join(map(str, self.steps_computation_mask)) + "_" + self.steps_computation_policy
        return s

    def replace(self, **changes) -> CacheConfig:
        return dataclasses.replace(self, **changes)


def _check(ok: bool, field: str, value, expected: str) -> None:
    if not ok:
        raise ValueError(f"CacheConfig.{field}={value!r} is invalid: expected {expected}")


def _int(spec: str, key: str, val: str) -> int:
    try:
        return int(val)
    except ValueError:
        raise ValueError(f"cache spec {spec!r}: {key}{val} needs an integer") from None


def _fields_from_tokens(spec: str, v: dict[str, str]) -> dict:
    out: dict = {}
    names = {"F": "Fn_compute_blocks", "B": "Bn_compute_blocks", "W": "max_warmup_steps", "I": "warmup_interval"}
    for key, name in names.items():
        if key in v:
            out[name] = _int(spec, key, v[key])
    for key, name in (("M", "max_cached_steps"), ("MC", "max_continuous_cached_steps")):
        if key in v:
            n = _int(spec, key, v[key])
            out[name] = -1 if n <= 0 else n  # cache-dit prints unlimited as 0
    if "R" in v:
        out["residual_diff_threshold"] = float(v["R"])
    if "O" in v:  # cache-dit's T<on>O<order>
        order = _int(spec, "O", v["O"])
        out["taylorseer_order"] = order if _int(spec, "T", v.get("T", "1")) else 0
    elif "T" in v:
        out["taylorseer_order"] = _int(spec, "T", v["T"])
    if "ET" in v:
        out["taylorseer_encoder"] = bool(_int(spec, "ET", v["ET"]))
    if "SCM" in v:
        out["steps_computation_mask"] = _mask(spec, v["SCM"], v.get("N"))
    if "policy" in v:
        out["steps_computation_policy"] = v["policy"]
    if "CFG" in v:
        flag = _int(spec, "CFG", v["CFG"])
        if flag not in (0, 1):
            raise ValueError(f"cache spec {spec!r}: CFG takes 0 or 1, got {flag}")
        out["enable_separate_cfg"] = bool(flag)
    return out


# cache-dit's preset masks for 28 steps: alternating runs of computed / cached steps (last step computed)
PRESET_BINS = {
    "slow": ([8, 3, 3, 2, 1, 1], [1, 2, 2, 2, 3]),
    "medium": ([6, 2, 2, 2, 2, 1], [1, 3, 3, 3, 3]),
    "fast": ([6, 1, 1, 1, 1, 1], [1, 3, 4, 5, 4]),
    "ultra": ([4, 1, 1, 1, 1], [2, 5, 6, 7]),
}
MAX_MASK_STEPS = 1024


def steps_mask(compute_bins: list[int], cache_bins: list[int], total_steps: int | None = None) -> tuple[int, ...]:
    """`[1]*compute_bins[0] + [0]*cache_bins[0] + [1]*compute_bins[1] + …`, cut to `total_steps`."""
    mask: list[int] = []
    for k, c in enumerate(compute_bins):
        mask += [1] * c
        if k < len(cache_bins):
            mask += [0] * cache_bins[k]
    return tuple(mask[:total_steps] if total_steps else mask)


def _mask(spec: str, val: str, steps: str | None) -> tuple[int, ...]:
    if val in PRESET_BINS:
        if steps != "28":
            raise ValueError(f"cache spec {spec!r}: preset mask SCM{val} is defined for 28 steps: add N28, or give "
                             "the mask digits (SCM1111110110…)")
        return steps_mask(*PRESET_BINS[val], 28)
    if not val or set(val) - {"0", "1"}:
        raise ValueError(f"cache spec {spec!r}: SCM takes 0/1 digits or one of {sorted(PRESET_BINS)}, got {val!r}")
    return tuple(int(c) for c in val)


def as_config(cache: str | CacheConfig) -> CacheConfig:
    if isinstance(cache, CacheConfig):
        return cache
    if isinstance(cache, str):
        return CacheConfig.parse(cache)
    raise TypeError(f"cache must be a spec string, a CacheConfig or None, got {type(cache).__name__}")
