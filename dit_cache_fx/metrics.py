"""Image fidelity metrics: `dit-cache-fx metrics REF TEST`, and the same functions for Python.

    from dit_cache_fx.metrics import compare, psnr, ssim, mse
    result = compare("out/uncached", "out/cached")          # matched by relative file name
    print(result.psnr, result.ssim, result.mse, result.count)

REF and TEST are two folders (matched by relative file name) or two files: images (.png, .jpg, .jpeg, .webp,
.bmp; alpha is dropped, palette / 1-bit images become RGB / gray) or tensors (.pt via `torch.load(...,
weights_only=True)`, .npy without pickles). A tensor holds one image [H,W] / [C,H,W], a batch [N,C,H,W], a
video [T,C,H,W] or a batch of videos [N,T,C,H,W]; every image (frame) is one pair. Channels are the
third-from-last axis when it has 1, 3 or 4 entries, else the last axis ([..., H, W, C], as numpy images are).

**Data range** (the peak value PSNR and SSIM use), decided per file from the *reference*, unless
`data_range` / `--data-range` says otherwise:
  * uint8 -> 255, uint16 -> 65535; other integers -> 255 if all values are in [0, 255], else 65535 if in
    [0, 65535];
  * floats -> 1 if all values are in [0, 1] (diffusers' `output_type="pt"` / `"np"`), 2 if in [-1, 1] (a
    VAE's decoded output before post-processing), 255 if in [0, 255];
  * anything else (or NaN / inf) is an error that asks for `--data-range`; so is a test file whose kind
    (integer vs float) differs from its reference, which is nearly always a scale mistake.

**Metrics.** PSNR = 10 log10(peak² / MSE) per image, in dB; the reported value is the mean of the per-image
PSNRs (cache-dit's convention), not the PSNR of the mean MSE; identical images give inf, and one inf makes
the mean inf (cache-dit 1.5.3 instead leaves identical pairs out of its mean). MSE is in the data's own units
(0–255² for 8-bit images), computed in float64. SSIM is scikit-image's `structural_similarity`, averaged over
channels and then over images.

Why scikit-image for SSIM: it is the maintained reference implementation most papers and tools call
(cache-dit's own `cache-dit-metrics` included), needs only numpy/scipy (no torch, no weights), and with
`gaussian_weights=True, sigma=1.5, use_sample_covariance=False` it is exactly Wang et al. 2004 (11x11
Gaussian window, K1=0.01, K2=0.03) -- our default, `window="gaussian"`. cache-dit 1.5.3 calls it with
scikit-image's defaults instead (7x7 uniform window, sample covariance): `window="uniform"` /
`--ssim-window uniform` reproduces those numbers. It is imported on first use, so the core install (no
scikit-image) can still import this module and compute PSNR and MSE.

**Optional metrics** (`lpips`, `fid`, `clip`) run only when their package *and* their weights are already on
this machine: nothing is ever downloaded (Hugging Face is forced offline, torch hub weights are looked up in
`torch.hub.get_dir()/checkpoints` before anything is built). Otherwise a one-line note says what to install
and which weights to fetch, and the other metrics go on. LPIPS: the `lpips` package (AlexNet, inputs scaled
to [-1, 1]), per pair, lower is closer. FID: `pytorch-fid`'s Inception-v3 pool features of all REF images vs
all TEST images (one number for the set; needs >= 2 pairs, and is only meaningful with hundreds). CLIP: the
cosine similarity of the two images' CLIP image embeddings ×100 (image-image, there being no prompts here),
from a model in the Hugging Face cache or a local folder (`clip_model`).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import re
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
TENSOR_SUFFIXES = (".pt", ".npy")
DEFAULT_METRICS = ("psnr", "ssim", "mse")
OPTIONAL_METRICS = ("lpips", "fid", "clip")
ALL_METRICS = DEFAULT_METRICS + OPTIONAL_METRICS
CLIP_MODEL = "openai/clip-vit-large-patch14"
EXTRA_HINT = 'pip install "dit-cache-fx[metrics]"'

_CHANNELS = (1, 3, 4)
_SSIM_WINDOWS = {  # scikit-image keyword arguments, smallest image side they need
    "gaussian": ({"gaussian_weights": True, "sigma": 1.5, "use_sample_covariance": False}, 11),
    "uniform": ({}, 7),
}
ArrayLike = Any  # a numpy array, a torch tensor, or anything np.asarray takes


class MetricsError(ValueError):
    """A problem with the inputs, said in one line (the CLI prints it and exits with code 2)."""


class MissingExtraError(MetricsError, ImportError):
    """An optional dependency of a default metric or of image loading is not installed."""


# --- arrays ---------------------------------------------------------------------------------------------


def _as_numpy(x: ArrayLike) -> np.ndarray:
    """A numpy view of a numpy array or a torch tensor (half / bfloat16 widened to float32)."""
    if isinstance(x, np.ndarray):
        return x
    if hasattr(x, "detach") and hasattr(x, "cpu"):  # a torch tensor, without importing torch
        t = x.detach().cpu()
        if t.is_floating_point() and t.element_size() < 4:
            t = t.float()
        return t.numpy()
    return np.asarray(x)


def _pair(a: ArrayLike, b: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    x, y = _as_numpy(a).astype(np.float64), _as_numpy(b).astype(np.float64)
    if x.shape != y.shape:
        raise MetricsError(f"shapes differ: {x.shape} vs {y.shape}")
    return x, y


def split_images(x: ArrayLike) -> list[tuple[str, np.ndarray]]:
    """The images in `x`, each as [H, W, C] with its index label ("" for a single image, "[2]", "[0,5]")."""
    arr = _as_numpy(x)
    if arr.ndim == 2:
        return [("", arr[..., None])]
    if not 3 <= arr.ndim <= 5:
        raise MetricsError(f"a {arr.ndim}-D array is not an image, a batch or a video (shape {arr.shape})")
    if arr.shape[-3] in _CHANNELS:
        arr = np.moveaxis(arr, -3, -1)
    elif arr.shape[-1] not in _CHANNELS:
        raise MetricsError(f"cannot tell the channel axis of shape {arr.shape} (1, 3 or 4 channels, "
                           "at axis -3 or -1)")
    lead = arr.shape[:-3]
    flat = arr.reshape(-1, *arr.shape[-3:])
    labels = ["[" + ",".join(map(str, i)) + "]" for i in np.ndindex(*lead)] if lead else [""]
    return list(zip(labels, flat))


def value_range(x: ArrayLike) -> tuple[float, float]:
    """The (low, high) that `x`'s values are taken to live in: the data-range rule of the module docstring."""
    arr = _as_numpy(x)
    if arr.size == 0:
        raise MetricsError("empty array")
    if arr.dtype.kind == "u" and arr.dtype.itemsize <= 2:
        return 0.0, float(np.iinfo(arr.dtype).max)
    if arr.dtype.kind not in "iuf":
        raise MetricsError(f"unsupported data type {arr.dtype}")
    lo, hi = float(arr.min()), float(arr.max())
    if not (math.isfinite(lo) and math.isfinite(hi)):
        raise MetricsError("the data holds NaN or inf values")
    bounds = [(0.0, 255.0), (0.0, 65535.0)] if arr.dtype.kind in "iu" else [(0.0, 1.0), (-1.0, 1.0), (0.0, 255.0)]
    for low, high in bounds:
        if low <= lo and hi <= high:
            return low, high
    known = ", ".join(f"[{a:g}, {b:g}]" for a, b in bounds)
    raise MetricsError(f"{arr.dtype} values in [{lo:g}, {hi:g}] fit no known range ({known}); pass --data-range")


# --- the metrics ----------------------------------------------------------------------------------------


def mse(a: ArrayLike, b: ArrayLike) -> float:
    """Mean squared error over all elements, in float64, in the data's own units."""
    x, y = _pair(a, b)
    return float(np.mean((x - y) ** 2))


def psnr(a: ArrayLike, b: ArrayLike, data_range: float) -> float:
    """PSNR in dB of `b` against `a` taken as one signal (one MSE over all elements); inf when equal.

    `data_range` is the peak value (1 for [0, 1] floats, 255 for 8-bit). For the mean of per-image PSNRs
    over a batch or a folder, use `compare`.
    """
    err = mse(a, b)
    return math.inf if err == 0 else 10 * math.log10(data_range**2 / err)


def _skimage_ssim():
    try:
        from skimage.metrics import structural_similarity
    except ImportError as e:
        raise MissingExtraError(f"SSIM needs scikit-image: {EXTRA_HINT} (or leave ssim out of --metrics)") from e
    return structural_similarity


def _ssim_image(x: np.ndarray, y: np.ndarray, data_range: float, window: str) -> float:
    """SSIM of two [H, W, C] images, the mean over channels."""
    if window not in _SSIM_WINDOWS:
        raise MetricsError(f"unknown SSIM window {window!r} (choose from {', '.join(_SSIM_WINDOWS)})")
    kwargs, side = _SSIM_WINDOWS[window]
    if min(x.shape[:2]) < side:
        raise MetricsError(f"SSIM with the {window} window needs images of at least {side}x{side} pixels, "
                           f"got {x.shape[0]}x{x.shape[1]} (leave ssim out of --metrics)")
    score = _skimage_ssim()(x.astype(np.float64), y.astype(np.float64), data_range=data_range,
                            channel_axis=-1, **kwargs)
    return float(score)


def ssim(a: ArrayLike, b: ArrayLike, data_range: float, *, window: str = "gaussian") -> float:
    """SSIM of `b` against `a` (scikit-image): one image, or the mean over a batch / video's images.

    Layouts as in `split_images`. `window="gaussian"` is Wang et al. 2004 (11x11 Gaussian, sigma 1.5);
    `window="uniform"` is scikit-image's default 7x7 window (what cache-dit 1.5.3 reports).
    """
    _skimage_ssim()
    xs, ys = split_images(a), split_images(b)
    if [x.shape for _, x in xs] != [y.shape for _, y in ys]:
        raise MetricsError(f"shapes differ: {_as_numpy(a).shape} vs {_as_numpy(b).shape}")
    return float(np.mean([_ssim_image(x, y, data_range, window) for (_, x), (_, y) in zip(xs, ys)]))


# --- optional metrics: available only when package and weights are already here ---------------------------


def _torch_checkpoint(name: str) -> Path:
    import torch

    return Path(torch.hub.get_dir()) / "checkpoints" / name


def _missing_modules(names: Sequence[str]) -> list[str]:
    return [n for n in names if importlib.util.find_spec(n) is None]


def _hf_cached(model: str, files: Sequence[str]) -> bool:
    """Whether `model` (a local folder or a hub id in the Hugging Face cache) has all of `files`."""
    weights = ("model.safetensors", "pytorch_model.bin")
    if Path(model).is_dir():
        return all((Path(model) / f).is_file() for f in files) and any((Path(model) / w).is_file() for w in weights)
    from huggingface_hub import try_to_load_from_cache

    def cached(f: str) -> bool:
        try:
            return isinstance(try_to_load_from_cache(model, f), str)
        except ValueError:  # not a valid repo id
            return False

    return all(cached(f) for f in files) and any(cached(w) for w in weights)


def unavailable(metric: str, clip_model: str = CLIP_MODEL) -> str | None:
    """Why the optional `metric` cannot run here, with how to make it run (None: it can)."""
    if metric == "clip":
        if _missing_modules(["transformers", "torch"]):
            return "transformers not installed; to use it: pip install transformers"
        files = ["config.json", "preprocessor_config.json"]
        if Path(clip_model).is_dir() and not _hf_cached(clip_model, files):
            return f"CLIP folder {clip_model} lacks {', '.join(files)} or model.safetensors / pytorch_model.bin"
        if not _hf_cached(clip_model, files):
            return (f"CLIP weights {clip_model} not in the Hugging Face cache; to use it, once online: "
                    f"hf download {clip_model} (or pass --clip-model LOCAL_FOLDER)")
        return None
    packages, pip, weights, fetch = {
        "lpips": (["lpips", "torchvision"], "pip install lpips torchvision", "alexnet-owt-7be5be79.pth",
                  "python -c \"import lpips; lpips.LPIPS(net='alex')\""),
        "fid": (["pytorch_fid", "scipy", "torchvision"], "pip install pytorch-fid",
                "pt_inception-2015-12-05-6726825d.pth",
                "python -c \"from pytorch_fid.inception import InceptionV3; InceptionV3()\""),
    }[metric]
    path = _torch_checkpoint(weights)
    get = f"to use it: {pip}, then fetch {path} once online: {fetch}"
    missing = _missing_modules(packages)
    if missing:
        return f"{' and '.join(missing)} not installed; {get}"
    if not path.is_file():
        return f"weights {path.name} not in {path.parent}; {get}"
    return None


def _unit_rgb(img: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """[H, W, C] data in [lo, hi] -> float32 [3, H, W] in [0, 1] (gray repeated, alpha dropped)."""
    x = np.clip((img.astype(np.float32) - lo) / (hi - lo), 0.0, 1.0)
    x = np.repeat(x, 3, axis=-1) if x.shape[-1] == 1 else x[..., :3]
    return np.ascontiguousarray(x.transpose(2, 0, 1))


class _Lpips:
    per_pair = True

    def __init__(self):
        import lpips
        import torch

        self.torch, self.net = torch, lpips.LPIPS(net="alex", verbose=False).eval()

    def add(self, x: np.ndarray, y: np.ndarray) -> float:
        t = lambda a: self.torch.from_numpy(a)[None] * 2 - 1  # noqa: E731
        with self.torch.no_grad():
            return float(self.net(t(x), t(y)))


class _Clip:
    per_pair = True

    def __init__(self, clip_model: str):
        import torch
        from transformers import CLIPImageProcessor, CLIPModel

        self.torch = torch
        self.proc = CLIPImageProcessor.from_pretrained(clip_model, local_files_only=True)
        self.model = CLIPModel.from_pretrained(clip_model, local_files_only=True).eval()

    def _embed(self, x: np.ndarray):
        pixels = self.proc(images=[(x.transpose(1, 2, 0) * 255).round().astype(np.uint8)], return_tensors="pt")
        with self.torch.no_grad():
            out = self.model.get_image_features(pixel_values=pixels["pixel_values"])
        f = out if isinstance(out, self.torch.Tensor) else out.pooler_output  # transformers 5: an output object
        return f / f.norm(dim=-1, keepdim=True)

    def add(self, x: np.ndarray, y: np.ndarray) -> float:
        return float(100 * (self._embed(x) * self._embed(y)).sum())


class _Fid:
    per_pair = False

    def __init__(self):
        import torch
        from pytorch_fid.inception import InceptionV3

        self.torch, self.net = torch, InceptionV3([InceptionV3.BLOCK_INDEX_BY_DIM[2048]]).eval()
        self.feats: tuple[list, list] = ([], [])

    def add(self, x: np.ndarray, y: np.ndarray) -> None:
        with self.torch.no_grad():
            for feats, img in zip(self.feats, (x, y)):
                feats.append(self.net(self.torch.from_numpy(img)[None])[0].flatten().numpy())

    def total(self) -> float:
        from pytorch_fid.fid_score import calculate_frechet_distance

        if len(self.feats[0]) < 2:
            raise MetricsError("FID needs at least 2 image pairs")
        stats = [(np.mean(f, axis=0), np.cov(np.stack(f), rowvar=False)) for f in self.feats]
        return float(calculate_frechet_distance(*stats[0], *stats[1]))


_OPTIONAL_CLASSES = {"lpips": _Lpips, "fid": _Fid}


# --- files ----------------------------------------------------------------------------------------------


def _natural(name: str) -> list:
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name)]


def _collect(root: Path) -> dict[str, Path]:
    suffixes = IMAGE_SUFFIXES + TENSOR_SUFFIXES
    return {p.relative_to(root).as_posix(): p for p in root.rglob("*")
            if p.is_file() and p.suffix.lower() in suffixes}


def _few(names: list[str], n: int = 3) -> str:
    return ", ".join(names[:n]) + (f", ... ({len(names) - n} more)" if len(names) > n else "")


def match_files(ref: Path, test: Path) -> list[tuple[str, Path, Path]]:
    """(name, ref file, test file) for two files, or for two folders matched by relative file name."""
    for side, p in (("REF", ref), ("TEST", test)):
        if not p.exists():
            raise MetricsError(f"{side} {p} does not exist")
    if ref.is_dir() != test.is_dir():
        raise MetricsError(f"REF {ref} and TEST {test} must both be folders or both be files")
    if not ref.is_dir():
        for side, p in (("REF", ref), ("TEST", test)):
            if p.suffix.lower() not in IMAGE_SUFFIXES + TENSOR_SUFFIXES:
                raise MetricsError(f"{side} {p}: not an image ({', '.join(IMAGE_SUFFIXES)}) or a tensor (.pt, .npy)")
        return [(ref.name, ref, test)]
    files = {}
    for side, p in (("REF", ref), ("TEST", test)):
        files[side] = _collect(p)
        if not files[side]:
            raise MetricsError(f"no images ({', '.join(IMAGE_SUFFIXES)}) or tensors (.pt, .npy) under {side} {p}")
    only_ref = sorted(files["REF"].keys() - files["TEST"].keys(), key=_natural)
    only_test = sorted(files["TEST"].keys() - files["REF"].keys(), key=_natural)
    if only_ref or only_test:
        parts = [f"{len(names)} only in {side} ({_few(names)})"
                 for side, names in (("REF", only_ref), ("TEST", only_test)) if names]
        raise MetricsError("REF and TEST file names differ: " + "; ".join(parts))
    return [(n, files["REF"][n], files["TEST"][n]) for n in sorted(files["REF"], key=_natural)]


def _read_image(path: Path) -> np.ndarray:
    try:
        from PIL import Image
    except ImportError as e:
        raise MissingExtraError(f"reading images needs Pillow: {EXTRA_HINT}") from e
    with Image.open(path) as im:
        if im.mode in ("1", "LA", "La"):
            im = im.convert("L")
        elif im.mode not in ("L", "I", "I;16", "I;16L", "I;16B", "F", "RGB"):
            im = im.convert("RGB")
        arr = np.asarray(im)
    return arr.astype(arr.dtype.newbyteorder("="))


def _read_tensor(path: Path) -> np.ndarray:
    if path.suffix.lower() == ".npy":
        return np.load(path, allow_pickle=False)
    import torch

    obj = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(obj, torch.Tensor):
        raise MetricsError(f"{path} holds a {type(obj).__name__}, not a tensor")
    return _as_numpy(obj)


def read_file(path: Path) -> np.ndarray:
    """An image file as [H, W] / [H, W, C], or a tensor file's array as saved."""
    try:
        return _read_image(path) if path.suffix.lower() in IMAGE_SUFFIXES else _read_tensor(path)
    except MetricsError:
        raise
    except Exception as e:  # whatever the decoder raises for a damaged file
        lines = str(e).strip().splitlines()
        raise MetricsError(f"cannot read {path}: {type(e).__name__}: {lines[0] if lines else ''}") from e


def _file_images(path: Path, arr: np.ndarray) -> list[tuple[str, np.ndarray]]:
    if path.suffix.lower() in IMAGE_SUFFIXES:  # already [H, W, C]: never reinterpret a 3-pixel-tall image
        return [("", arr if arr.ndim == 3 else arr[..., None])]
    return split_images(arr)


# --- comparing ------------------------------------------------------------------------------------------


@dataclass
class PairResult:
    """One image pair: its name (relative file name, plus [i] / [n,t] inside a tensor) and its values."""

    name: str
    values: dict[str, float]
    data_range: float


@dataclass
class MetricsResult:
    """What `compare` found: per-pair rows, the means, and the notes on metrics that did not run."""

    metrics: list[str]
    pairs: list[PairResult] = field(default_factory=list)
    means: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    files: int = 0

    @property
    def count(self) -> int:
        return len(self.pairs)

    @property
    def psnr(self) -> float | None:
        return self.means.get("psnr")

    @property
    def ssim(self) -> float | None:
        return self.means.get("ssim")

    @property
    def mse(self) -> float | None:
        return self.means.get("mse")

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: the means at the top level, `pairs`, `count`; inf / nan as the strings "inf" / "nan"."""
        pairs = [{"name": p.name, **{k: _json_num(v) for k, v in p.values.items()}, "data_range": p.data_range}
                 for p in self.pairs]
        return {**{k: _json_num(v) for k, v in self.means.items()}, "count": self.count, "files": self.files,
                "metrics": self.metrics, "notes": self.notes, "pairs": pairs}

    def table(self, per_pair: bool = False) -> str:
        """A text table: a row per pair when `per_pair`, and the mean row."""
        head = ["pair"] + [_LABELS[m] for m in self.metrics]
        rows = [[p.name] + [_fmt(m, p.values.get(m)) for m in self.metrics] for p in self.pairs] if per_pair else []
        rows.append([f"mean ({self.count})"] + [_fmt(m, self.means.get(m)) for m in self.metrics])
        widths = [max(len(x) for x in col) for col in zip(head, *rows)]
        line = lambda row: "  ".join(x.ljust(w) for x, w in zip(row, widths)).rstrip()  # noqa: E731
        ranges = sorted({p.data_range for p in self.pairs})
        plural = lambda n, what: f"{n} {what}{'' if n == 1 else 's'}"  # noqa: E731
        title = (f"{plural(self.count, 'image pair')} in {plural(self.files, 'file')}, data range "
                 f"{'/'.join(f'{r:g}' for r in ranges)}")
        return "\n".join([title, line(head), line(["-" * w for w in widths])] + [line(r) for r in rows])


_LABELS = {"psnr": "PSNR dB", "ssim": "SSIM", "mse": "MSE", "lpips": "LPIPS", "fid": "FID", "clip": "CLIP"}
_DIGITS = {"psnr": ".2f", "ssim": ".4f", "mse": ".6g", "lpips": ".4f", "fid": ".2f", "clip": ".2f"}


def _fmt(metric: str, v: float | None) -> str:
    if v is None:
        return "-"
    return f"{v:{_DIGITS[metric]}}" if math.isfinite(v) else str(v)


def _json_num(v: float) -> float | str:
    return v if math.isfinite(v) else str(v)


def _parse_metrics(metrics: str | Sequence[str]) -> list[str]:
    names = [m.strip().lower() for m in (metrics.split(",") if isinstance(metrics, str) else metrics) if m.strip()]
    unknown = [m for m in names if m not in ALL_METRICS]
    if unknown or not names:
        raise MetricsError(f"unknown metric {', '.join(unknown) or '(none given)'} (choose from {', '.join(ALL_METRICS)})")
    return list(dict.fromkeys(names))


def _sources(ref: Any, test: Any) -> Iterator[tuple[str, np.ndarray, np.ndarray, list, list]]:
    """(name, ref data, test data, ref images, test images) per file pair, read one pair at a time."""
    if isinstance(ref, (str, os.PathLike)) and isinstance(test, (str, os.PathLike)):
        for name, a, b in match_files(Path(ref), Path(test)):
            ra, rb = read_file(a), read_file(b)
            yield name, ra, rb, _file_images(a, ra), _file_images(b, rb)
    else:
        ra, rb = _as_numpy(ref), _as_numpy(test)
        yield "array", ra, rb, split_images(ra), split_images(rb)


def _check_same(name: str, ref: np.ndarray, test: np.ndarray, xs: list, ys: list) -> None:
    if len(xs) != len(ys):
        raise MetricsError(f"{name}: REF holds {len(xs)} images, TEST {len(ys)}")
    for (label, x), (_, y) in zip(xs, ys):
        if x.shape != y.shape:
            size = lambda s: "x".join(map(str, s))  # noqa: E731
            raise MetricsError(f"{name}{label}: sizes differ, REF is {size(x.shape)} but TEST is {size(y.shape)} "
                               "(H x W x channels)")
    if (ref.dtype.kind == "f") != (test.dtype.kind == "f"):
        raise MetricsError(f"{name}: REF is {ref.dtype} but TEST is {test.dtype} (one integer, one float: "
                           "a scale mistake?); convert one or pass --data-range")


def _range_for(name: str, ref: np.ndarray, data_range: float | None) -> tuple[float, float]:
    if data_range is None:
        try:
            return value_range(ref)
        except MetricsError as e:
            raise MetricsError(f"{name}: {e}") from None
    lo = 0.0 if float(ref.min()) >= 0 else -data_range / 2
    return lo, lo + data_range


def _start_optional(names: list[str], clip_model: str, notes: list[str]) -> dict[str, Any]:
    started = {}
    for m in names:
        reason = unavailable(m, clip_model)
        if reason is None:
            try:
                started[m] = _Clip(clip_model) if m == "clip" else _OPTIONAL_CLASSES[m]()
            except Exception as e:  # a broken install or damaged weights: say so, go on with the others
                reason = f"could not load it: {type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}"
        if reason is not None:
            notes.append(f"note: {m} skipped: {reason}")
    return started


def compare(ref: str | os.PathLike | ArrayLike, test: str | os.PathLike | ArrayLike,
            metrics: str | Sequence[str] = DEFAULT_METRICS, *, data_range: float | None = None,
            ssim_window: str = "gaussian", clip_model: str = CLIP_MODEL) -> MetricsResult:
    """Compare TEST against REF: two folders / files (paths) or two arrays / tensors of images.

    `metrics`: names from ALL_METRICS (a list or "psnr,ssim"). `data_range`: the peak-to-peak range for
    PSNR / SSIM (default: from each reference file, the rule in the module docstring). Optional metrics that
    cannot run here are left out, each with a line in `result.notes`. Raises MetricsError on bad inputs.
    """
    names = _parse_metrics(metrics)
    if "ssim" in names:
        _skimage_ssim()
    if ssim_window not in _SSIM_WINDOWS:
        raise MetricsError(f"unknown SSIM window {ssim_window!r} (choose from {', '.join(_SSIM_WINDOWS)})")
    result = MetricsResult(metrics=[])
    optional = _start_optional([m for m in names if m in OPTIONAL_METRICS], clip_model, result.notes)
    result.metrics = [m for m in names if m in DEFAULT_METRICS or m in optional]
    for name, ref_data, test_data, xs, ys in _sources(ref, test):
        _check_same(name, ref_data, test_data, xs, ys)
        lo, hi = _range_for(name, ref_data, data_range)
        result.files += 1
        for (label, x), (_, y) in zip(xs, ys):
            result.pairs.append(PairResult(name + label, _pair_values(names, x, y, lo, hi, ssim_window, optional),
                                           hi - lo))
    for m in list(result.metrics):
        if m in optional and not optional[m].per_pair:
            try:
                result.means[m] = optional[m].total()
            except MetricsError as e:
                result.notes.append(f"note: {m} skipped: {e}")
                result.metrics.remove(m)
        else:
            result.means[m] = float(np.mean([p.values[m] for p in result.pairs]))
    return result


def _pair_values(names: list[str], x: np.ndarray, y: np.ndarray, lo: float, hi: float, window: str,
                 optional: dict[str, Any]) -> dict[str, float]:
    values = {}
    if "psnr" in names:
        values["psnr"] = psnr(x, y, hi - lo)
    if "ssim" in names:
        values["ssim"] = _ssim_image(x, y, hi - lo, window)
    if "mse" in names:
        values["mse"] = mse(x, y)
    if optional:
        ux, uy = _unit_rgb(x, lo, hi), _unit_rgb(y, lo, hi)
        for m, metric in optional.items():
            v = metric.add(ux, uy)
            if v is not None:
                values[m] = v
    return values


def main(args: argparse.Namespace) -> None:
    """`dit-cache-fx metrics REF TEST`: print the table (or JSON); bad inputs -> one line on stderr, exit 2."""
    os.environ["HF_HUB_OFFLINE"] = "1"  # never download: optional metrics use only what is already here
    try:
        result = compare(args.ref, args.test, args.metrics, data_range=args.data_range,
                         ssim_window=args.ssim_window, clip_model=args.clip_model)
    except MetricsError as e:
        print(f"dit-cache-fx metrics: error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    for note in result.notes:
        print(note, file=sys.stderr)
    print(json.dumps(result.to_dict(), indent=2) if args.json else result.table(per_pair=args.per_pair))
