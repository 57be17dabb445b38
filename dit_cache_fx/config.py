"""`CacheConfig`: DBCache (+ TaylorSeer or FoCa) settings, and the spec-string grammar.

Every field declares its own token, whether it shapes the compiled graph ("structural") and how its
value is read and printed; `parse`, `__str__`, `structural_fields()` and the runtime policy are derived
from that one declaration, and so is the documentation table `grammar_table()`.

Tokens are joined by `_`, any order, each at most once, all optional; letters may be glued (`F8B0`,
`W8I1M0MC3`). cache-dit's printed names parse too: a leading `DBCache`, `T<0|1>O<order>` (TaylorSeer
on/off and order), `FoCa` (the FoCa calibrator), and suffixes `_S<n>` (stats) and `_N<n>` (steps; needed by the SCM presets); there
`M0`/`MC0` mean unlimited, as here.

`DBPruneConfig` (a spec starting `DBPrune`, cache-dit's printed name `DBPrune_F1B0_W4I1M0MC0_R0.08`) prunes
single blocks instead: see its docstring; its own tokens are `DT<0|1>` (dynamic threshold), `DR<x>` (its relax
ratio), `DM<x>` (its cap) and `NP<i,j,…>` (block ids never pruned).

A model with several block runs takes one config for every run, or a mapping from block-list name to a
config (`{"transformer_blocks": "F1B0_R0.08", "single_transformer_blocks": None}`); see `RunSpecs`.
"""

from __future__ import annotations

import dataclasses
import functools
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from .errors import DitCacheError

MAX_MASK_STEPS = 1024
# the CFG branch of a call the pipeline names with diffusers' `transformer.cache_context(name)`
# ("cond_uncond": CFG batched in one call); other names are not understood and leave the branch to the guess
CFG_BRANCH_OF_NAME = {"cond": 0, "cond_uncond": 0, "uncond": 1}

# cache-dit's preset masks for 28 steps: alternating runs of computed / cached steps (last step computed)
PRESET_BINS = {
    "slow": ([8, 3, 3, 2, 1, 1], [1, 2, 2, 2, 3]),
    "medium": ([6, 2, 2, 2, 2, 1], [1, 3, 3, 3, 3]),
    "fast": ([6, 1, 1, 1, 1, 1], [1, 3, 4, 5, 4]),
    "ultra": ([4, 1, 1, 1, 1], [2, 5, 6, 7]),
}


def steps_mask(compute_bins: list[int], cache_bins: list[int], total_steps: int | None = None) -> tuple[int, ...]:
    """`[1]*compute_bins[0] + [0]*cache_bins[0] + [1]*compute_bins[1] + …`, cut to `total_steps`."""
    mask: list[int] = []
    for k, c in enumerate(compute_bins):
        mask += [1] * c
        if k < len(cache_bins):
            mask += [0] * cache_bins[k]
    return tuple(mask[:total_steps] if total_steps else mask)


# ---------------------------------------------------------------------------------------------------------
# token kinds: how a token's text becomes a field value and back


@dataclass(frozen=True)
class Kind:
    pattern: str  # regex of the token's value text
    read: Any  # (text, tokens) -> value
    show: Any  # value -> text


def _int(text: str, _: dict) -> int:
    return int(text)


def _cap(text: str, _: dict) -> int:
    n = int(text)
    return -1 if n <= 0 else n  # cache-dit prints unlimited as 0


def _flag(text: str, _: dict) -> bool:
    if text not in ("0", "1"):
        raise ValueError("takes 0 or 1")
    return text == "1"


def _mask(text: str, tokens: dict) -> tuple[int, ...]:
    if text in PRESET_BINS:
        if tokens.get("N") != "28":
            raise ValueError(f"preset {text!r} is defined for 28 steps: add N28, or give the mask digits "
                             "(SCM1111110110…)")
        return steps_mask(*PRESET_BINS[text], 28)
    if not text or set(text) - {"0", "1"}:
        raise ValueError(f"SCM takes 0/1 digits or one of {sorted(PRESET_BINS)}")
    return tuple(int(c) for c in text)


def _ids(text: str, _: dict) -> tuple[int, ...]:
    ids = tuple(sorted({int(x) for x in text.split(",")}))
    return ids


_NUM = r"-?\d+"
INT = Kind(_NUM, _int, str)
CAP = Kind(_NUM, _cap, lambda v: str(max(0, v)))
FLOAT = Kind(r"-?\d+(?:\.\d*)?(?:e-?\d+)?", lambda t, _: float(t), lambda v: f"{v:g}")
FLAG = Kind(r"\d+", _flag, lambda v: str(int(v)))
MASK = Kind(r"\w+", _mask, lambda v: "".join(map(str, v)))
WORD = Kind("", lambda t, _: True, lambda v: "")
IDS = Kind(r"\d+(?:,\d+)*", _ids, lambda v: ",".join(map(str, v)))  # a bare token, no value: present = on

# a cached stream's calibrator code (`CacheConfig.taylor_order_for`): a TaylorSeer order K >= 0 (0 = plain
# residual), or FOCA for FoCa's stack
FOCA = -1


def _spec(default, token: str | None, kind: Kind | None = None, *, structural: bool = False,
          step_context: bool = False, shown: str = "always"):
    """A config field. `structural`: changing it changes the compiled graph. `step_context`: it belongs to the
    per-module step context (one value for every region). `shown`: "always" or "changed" (printed by `str()`
    only when it differs from the default)."""
    return field(default=default, metadata=dict(token=token, kind=kind, structural=structural,
                                                step_context=step_context, shown=shown))


@dataclass(frozen=True)
class CacheConfig:
    """DBCache settings. Each field trades speed against fidelity to the uncached model.

    Attributes:
        Fn_compute_blocks: `F`. First blocks of a run always computed. More blocks → a more reliable
            similarity signal and closer outputs, but less compute skipped on cached steps.
        Bn_compute_blocks: `B`. Last blocks always computed; they refine the approximated state.
        residual_diff_threshold: `R`. Cache a step when the relative L1 change of the Fn residual since the
            last computed step is below this. Higher → more cached steps, lower quality. <= 0 never caches,
            >= 1 always caches (after warmup).
        max_warmup_steps, warmup_interval: `W`, `I`. Steps `range(0, W, I)` are always computed.
        max_cached_steps: `M`. Cap on cached steps per generation and CFG branch (-1 = unlimited).
        max_continuous_cached_steps: `MC`. At most this many consecutive cached steps, then one computed
            step (-1 = unlimited).
        taylorseer_order: `T`. Forecast the cached residual with a Taylor series of this order (0 = off):
            better approximations on smoothly changing residuals, k+1 residual-sized buffers per stream.
        taylorseer_encoder: `ET`. Also forecast the encoder stream's residual with the calibrator (TaylorSeer
            or FoCa; else it is reused as is; cache-dit's `enable_encoder_calibrator`).
        foca: `FoCa`. Forecast the cached residual with cache-dit's FoCa calibrator (BDF2 predictor + Heun
            corrector anchored at the last computed step, damped beyond 3 steps; no parameters): 4
            residual-sized buffers per stream. Excludes `T`.
        enable_separate_cfg: `CFG`. None = detect (the same timestep seen twice at the start of a
            generation), True/False = force. One value for the whole model.
        steps_computation_mask: `SCM`. Per-step 1 (always compute) / 0 (cache allowed); steps past its end
            are decided as usual. Warmup is cut to the mask's leading run of 1s.
        steps_computation_policy: `static`/`dynamic`. "dynamic": a 0 step still needs the diff test, M and
            MC; "static": a 0 step is cached unconditionally (a fixed schedule, no diff computed).
        timestep_arg: the model input that carries the timestep (None = found from the graph: the input
            that feeds the timestep embedding). One value for the whole model.
    """

    Fn_compute_blocks: int = _spec(8, "F", INT, structural=True)
    Bn_compute_blocks: int = _spec(0, "B", INT, structural=True)
    max_warmup_steps: int = _spec(8, "W", INT)
    warmup_interval: int = _spec(1, "I", INT)
    max_cached_steps: int = _spec(-1, "M", CAP)
    max_continuous_cached_steps: int = _spec(-1, "MC", CAP)
    residual_diff_threshold: float = _spec(0.08, "R", FLOAT)
    taylorseer_order: int = _spec(0, "T", INT, structural=True, shown="changed")
    taylorseer_encoder: bool = _spec(True, "ET", FLAG, structural=True, shown="changed")
    foca: bool = _spec(False, "FoCa", WORD, structural=True, shown="changed")
    enable_separate_cfg: bool | None = _spec(None, "CFG", FLAG, step_context=True, shown="changed")
    steps_computation_mask: tuple[int, ...] | None = _spec(None, "SCM", MASK, shown="changed")
    steps_computation_policy: str = _spec("dynamic", None)  # bare words `static` / `dynamic`
    timestep_arg: str | None = _spec(None, None, structural=True, step_context=True)

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
        _check(not (self.foca and self.taylorseer_order), "foca", self.foca,
               f"False with taylorseer_order={self.taylorseer_order} (one calibrator: TaylorSeer or FoCa)")
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

    def taylor_order_for(self, stream: str) -> int:
        """Calibrator code of a cached stream ("hidden" or "encoder"): its TaylorSeer order (0 = plain
        residual), or `FOCA`."""
        if stream != "hidden" and not self.taylorseer_encoder:
            return 0
        return FOCA if self.foca else self.taylorseer_order

    @property
    def valid_order(self) -> int:
        """The counters' `n_valid` is capped at this + 1: TaylorSeer's order, 1 for FoCa (two anchors)."""
        return 1 if self.foca else self.taylorseer_order

    @classmethod
    def structural_fields(cls) -> tuple[str, ...]:
        """Fields whose change needs a new compilation (they shape the rewritten graph)."""
        return tuple(f.name for f in dataclasses.fields(cls) if f.metadata["structural"])

    @classmethod
    def step_context_fields(cls) -> tuple[str, ...]:
        """Fields of the per-module step context: one value for every region of a model."""
        return tuple(f.name for f in dataclasses.fields(cls) if f.metadata["step_context"])

    @classmethod
    def parse(cls, spec: str) -> CacheConfig:
        """Parse a spec string such as `"F8B0_W8I1M0MC3_R0.08_T1"` (see the module docstring); a spec starting
        with `DBPrune` gives a `DBPruneConfig`."""
        if cls is CacheConfig and isinstance(spec, str) and "DBPrune" in _tokenize(spec):
            return DBPruneConfig.parse(spec)
        return cls(**cls._fields_of(spec))

    @classmethod
    def _fields_of(cls, spec: str) -> dict[str, Any]:
        """The fields a spec string sets (others keep their defaults)."""
        if not isinstance(spec, str) or not spec.strip():
            raise DitCacheError(f"cache spec must be a non-empty string, got {spec!r}")
        tokens = _tokenize(spec)
        known = {f.metadata["token"] for f in dataclasses.fields(cls)} | {"O", "S", "N", "P", "policy", "DBPrune"}
        stray = [t for t in tokens if t not in known]
        if stray:
            raise DitCacheError(f"cache spec {spec!r}: {', '.join(stray)} belong to DBPrune specs only (start the spec "
                                "with DBPrune_)")
        out: dict[str, Any] = {}
        for f in dataclasses.fields(cls):
            tok, kind = f.metadata["token"], f.metadata["kind"]
            if tok in tokens:
                try:
                    out[f.name] = kind.read(tokens[tok], tokens)
                except ValueError as e:
                    raise DitCacheError(f"cache spec {spec!r}: {tok} {e} (got {tok}{tokens[tok]})") from None
        if "O" in tokens:  # cache-dit's T<on>O<order>
            out["taylorseer_order"] = int(tokens["O"]) if tokens.get("T", "1") != "0" else 0
        if "policy" in tokens:
            out["steps_computation_policy"] = tokens["policy"]
        return out

    def __str__(self) -> str:
        parts, group = [], ""
        for f in dataclasses.fields(self):
            tok, kind, value = f.metadata["token"], f.metadata["kind"], getattr(self, f.name)
            if tok is None or value is None:
                continue
            if f.metadata["shown"] == "changed" and value == f.default:
                continue
            if tok == "ET" and not (self.taylorseer_order or self.foca):
                continue
            text = f"{tok}{kind.show(value)}"
            if tok in ("B", "I", "M", "MC"):  # glued to the previous token, as cache-dit prints them
                group += text
            else:
                if group:
                    parts.append(group)
                group = text
        parts.append(group)
        if self.steps_computation_mask:
            parts.append(self.steps_computation_policy)
        return "_".join(parts)

    def replace(self, **changes: Any) -> CacheConfig:
        return dataclasses.replace(self, **changes)


def _check(ok: bool, name: str, value: Any, expected: str, cls: str = "CacheConfig") -> None:
    if not ok:
        raise DitCacheError(f"{cls}.{name}={value!r} is invalid: expected {expected}")


@dataclass(frozen=True)
class DBPruneConfig(CacheConfig):
    """DBPrune settings (cache-dit's `DBPruneConfig`, "Dynamic Block Prune with Residual Caching").

    Every block of a run after the first `F` and before the last `B`, and not in `non_prune_block_ids`,
    decides on its own at each step: when the relative L1 change of its input hidden stream since the last
    step it was computed is below the threshold, it is pruned and its cached residuals (of every stream it
    carries) are added to its inputs instead. `W`/`I`, `M`/`MC` (counting steps with at least one pruned
    block), `CFG`, `SCM` work as for DBCache; a calibrator (`T<k>`, `FoCa`) forecasts each pruned block's
    residuals from that block's own computed steps.

    Attributes:
        enable_dynamic_prune_threshold: `DT`. Raise a block's threshold to the mean of the first (up to 5)
            positive diffs recorded earlier in the step (cond branch) × `dynamic_prune_threshold_relax_ratio`,
            when that is below `max_dynamic_prune_threshold` (default 2 × `R`).
        dynamic_prune_threshold_relax_ratio: `DR`. See above (cache-dit's default 1.25).
        max_dynamic_prune_threshold: `DM`. Cap of the relaxed threshold (None: 2 × `R`).
        non_prune_block_ids: `NP<i,j,…>`. Block indices (in the run) never pruned, besides Fn and Bn.
    """

    enable_dynamic_prune_threshold: bool = _spec(False, "DT", FLAG, shown="changed")
    dynamic_prune_threshold_relax_ratio: float = _spec(1.25, "DR", FLOAT, shown="changed")
    max_dynamic_prune_threshold: float | None = _spec(None, "DM", FLOAT, shown="changed")
    non_prune_block_ids: tuple[int, ...] = _spec((), "NP", IDS, structural=True, shown="changed")

    def __post_init__(self) -> None:
        super().__post_init__()
        name = "DBPruneConfig"
        _check(self.dynamic_prune_threshold_relax_ratio > 0, "dynamic_prune_threshold_relax_ratio",
               self.dynamic_prune_threshold_relax_ratio, "> 0", name)
        _check(self.max_dynamic_prune_threshold is None or self.max_dynamic_prune_threshold > 0,
               "max_dynamic_prune_threshold", self.max_dynamic_prune_threshold, "None (2 x R) or > 0", name)
        ids = self.non_prune_block_ids
        _check(isinstance(ids, tuple) and all(isinstance(i, int) and i >= 0 for i in ids), "non_prune_block_ids",
               ids, "a tuple of block indices >= 0", name)
        if list(ids) != sorted(set(ids)):
            object.__setattr__(self, "non_prune_block_ids", tuple(sorted(set(ids))))

    def prunable(self, num_blocks: int) -> list[int]:
        """Indices of the blocks (of a run of `num_blocks`) that decide for themselves: after Fn, before Bn,
        not in `non_prune_block_ids` (cache-dit's `get_non_prune_blocks_ids`, complemented)."""
        Fn, Bn = self.Fn_compute_blocks, self.Bn_compute_blocks
        return [j for j in range(Fn, num_blocks - Bn) if j not in self.non_prune_block_ids]

    def __str__(self) -> str:
        return "DBPrune_" + super().__str__()


def structural_changes(old: CacheConfig, new: CacheConfig) -> list[str]:
    """The graph-shaping differences between two configs: structural fields, and the technique itself
    (DBCache vs DBPrune: a region is rewritten differently)."""
    if type(old) is not type(new):
        return [f"the technique ({type(old).__name__} -> {type(new).__name__})"]
    return [f for f in type(new).structural_fields() if getattr(new, f) != getattr(old, f)]


def as_prune(config: CacheConfig | None) -> bool:
    """Whether `config` asks for DBPrune."""
    return isinstance(config, DBPruneConfig)


_ALL_FIELDS = (*dataclasses.fields(CacheConfig), *dataclasses.fields(DBPruneConfig))
_TOKENS = sorted({f.metadata["token"] for f in _ALL_FIELDS if f.metadata["token"]} | {"O", "S", "N", "P"},
                 key=len, reverse=True)
_KINDS = {f.metadata["token"]: f.metadata["kind"] for f in _ALL_FIELDS if f.metadata["token"]}
_KINDS["P"] = FLOAT  # cache-dit's summary suffix: pruned ratio in %
_TOKEN = re.compile("|".join(f"(?P<{t}>{t})(?P<{t}_v>{_KINDS[t].pattern if t in _KINDS else _NUM})"
                             for t in _TOKENS))
_IGNORED_PREFIXES = ("DBCache", "DBCACHE", "DB")


def _tokenize(spec: str) -> dict[str, str]:
    """`"F8B0_W8_R0.1_static"` → `{"F": "8", "B": "0", "W": "8", "R": "0.1", "policy": "static"}`."""
    values: dict[str, str] = {}

    def put(key: str, val: str) -> None:
        if key in values:
            raise DitCacheError(f"cache spec {spec!r}: token {key!r} given twice")
        values[key] = val

    for part in spec.strip().split("_"):
        if part.lower() == "dbprune":  # cache-dit's DBPruneConfig.strify() prefix
            put("DBPrune", "")
            continue
        for prefix in _IGNORED_PREFIXES:
            if part.startswith(prefix) and (len(part) == len(prefix) or not part[len(prefix)].isdigit()):
                part = part[len(prefix):]
                break
        if part in ("static", "dynamic"):
            put("policy", part)
            continue
        if part.lower() == "foca":  # cache-dit prints `FoCa`
            put("FoCa", "")
            continue
        pos = 0
        while pos < len(part):
            m = _TOKEN.match(part, pos)
            if m is None:
                break
            key = next(t for t in _TOKENS if m.group(t) is not None)
            put(key, m.group(f"{key}_v"))
            pos = m.end()
        if pos != len(part):
            raise DitCacheError(
                f"cache spec {spec!r}: cannot parse {part[pos:]!r} in {part!r}; expected tokens like "
                "F8 B0 W8 I1 M0 MC3 R0.08 T1 FoCa CFG1 joined by '_' (see dit_cache_fx.config.GRAMMAR)")
    return values


def grammar_table() -> str:
    """The spec grammar as a markdown table, generated from the field declarations."""
    rows = ["| token | field | default | changes the graph |", "|---|---|---|---|"]
    base = {f.name for f in dataclasses.fields(CacheConfig)}
    for f in dataclasses.fields(DBPruneConfig):
        tok = f.metadata["token"]
        tok = "`static`/`dynamic`" if f.name == "steps_computation_policy" else (f"`{tok}`" if tok else "-")
        name = f"`{f.name}`" + ("" if f.name in base else " (DBPrune)")
        rows.append(f"| {tok} | {name} | {f.default!r} | {'yes' if f.metadata['structural'] else 'no'} |")
    return "\n".join(rows)


def as_config(cache: str | CacheConfig) -> CacheConfig:
    if isinstance(cache, CacheConfig):
        return cache
    if isinstance(cache, str):
        return CacheConfig.parse(cache)
    raise TypeError(f"cache must be a spec string, a CacheConfig or None, got {type(cache).__name__}")


# ---------------------------------------------------------------------------------------------------------
# one config per block run

CacheArg = str | CacheConfig | Mapping[str, str | CacheConfig | None] | None


@dataclass(frozen=True)
class RunSpecs:
    """Which config each block run of a model gets.

    `default` applies to every run (a chained run such as Flux's double + single blocks stays one run).
    With `per_list`, keys are block-list names (`"single_transformer_blocks"`) or chains of them joined by
    `+` (`"transformer_blocks+single_transformer_blocks"`); a run spanning several lists is then cut at the
    list boundaries unless its whole chain is a key; lists not named are not cached (`"*"` names the
    default).
    """

    default: CacheConfig | None
    per_list: tuple[tuple[str, CacheConfig | None], ...] = ()

    @classmethod
    def of(cls, cache: CacheArg) -> RunSpecs:
        if cache is None:
            return cls(None)
        if isinstance(cache, Mapping):
            items = {str(k): (None if v is None else as_config(v)) for k, v in cache.items()}
            default = items.pop("*", None)
            specs = cls(default, tuple(items.items()))
        else:
            specs = cls(as_config(cache))
        configs = [c for c in specs.configs if c is not None]
        for name in CacheConfig.step_context_fields():
            values = {getattr(c, name) for c in configs}
            if len(values) > 1:
                raise ValueError(f"CacheConfig.{name} is one setting for the whole model (the step context), but "
                                 f"the per-run specs give {sorted(map(repr, values))}")
        return specs

    @property
    def configs(self) -> list[CacheConfig | None]:
        return [self.default] + [c for _, c in self.per_list]

    @functools.cached_property
    def enabled(self) -> bool:  # read at every call
        return any(c is not None for c in self.configs)

    @property
    def step_config(self) -> CacheConfig:
        """A config carrying the step-context fields (the same in every run's config)."""
        return next((c for c in self.configs if c is not None), CacheConfig())

    def assign(self, lists: list[str]) -> list[tuple[list[str], CacheConfig | None]]:
        """Split a run over the block lists `lists` (in call order) into (lists, config) parts."""
        if not self.per_list:
            return [(lists, self.default)]
        table = dict(self.per_list)
        chain = "+".join(lists)
        if chain in table:
            return [(lists, table[chain])]
        return [([name], table.get(name, self.default)) for name in lists]

    def names(self) -> set[str]:
        return {n for key, _ in self.per_list for n in key.split("+")}

    def __str__(self) -> str:
        if not self.per_list:
            return str(self.default)
        items = [f"{k}: {v}" for k, v in self.per_list] + ([f"*: {self.default}"] if self.default else [])
        return "{" + ", ".join(items) + "}"
