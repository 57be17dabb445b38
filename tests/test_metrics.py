"""`dit-cache-fx metrics` and `dit_cache_fx.metrics`: known values, data ranges, file matching, CLI errors,
and the optional metrics' availability checks (nothing is ever downloaded)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from skimage.metrics import structural_similarity

from dit_cache_fx import metrics as M
from dit_cache_fx.digits.metrics import psnr as digits_psnr

REPO = Path(__file__).resolve().parents[1]
OFFSET5_PSNR = 10 * math.log10(255**2 / 25)  # a constant +5 on uint8: MSE 25


def _image(seed: int, size: tuple[int, int] = (24, 24), channels: int = 3) -> np.ndarray:
    return np.random.default_rng(seed).integers(20, 200, (*size, channels), dtype=np.uint8)


def _png(path: Path, arr: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr.squeeze(-1) if arr.shape[-1] == 1 else arr).save(path)
    return path


def _cli(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "TORCH_HOME": str(tmp_path / "torch_home"), "HF_HOME": str(tmp_path / "hf_home")}
    env.pop("HF_HUB_CACHE", None)
    return subprocess.run([sys.executable, "-m", "dit_cache_fx", "metrics", *map(str, args)], capture_output=True,
                          text=True, cwd=REPO, env=env, timeout=120)


def _expect_error(proc: subprocess.CompletedProcess, *fragments: str) -> None:
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("dit-cache-fx metrics: error:"), proc.stderr
    for f in fragments:
        assert f in lines[0], lines[0]


def test_help_parses_before_importing_anything_heavy():
    code = ("import sys\nfrom dit_cache_fx.__main__ import main\ntry:\n    main(['metrics', '--help'])\n"
            "except SystemExit:\n    pass\nassert not {'torch', 'numpy', 'skimage'} & set(sys.modules), 'heavy import'\n")
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True, cwd=REPO,
                         timeout=120).stdout
    assert "--per-pair" in out and "--json" in out and "default: psnr,ssim,mse" in out


# --- the functions ------------------------------------------------------------------------------------------


def test_psnr_and_mse_of_a_known_offset_numpy_and_torch():
    a = _image(0)
    b = a + np.uint8(5)  # no wrap-around: values stay below 205
    assert M.mse(a, b) == 25.0
    assert M.psnr(a, b, 255) == pytest.approx(OFFSET5_PSNR)
    assert M.psnr(torch.from_numpy(a), torch.from_numpy(b), data_range=255) == pytest.approx(OFFSET5_PSNR)
    assert M.psnr(b, a, 255) == pytest.approx(OFFSET5_PSNR)  # uint8 b - a never wraps: float64 math
    assert M.psnr(a, a, 255) == math.inf and M.mse(a, a) == 0.0


def test_digits_psnr_is_the_shared_one():
    a = torch.rand(4, 1, 16, 16, generator=torch.Generator().manual_seed(0))
    b = (a + 0.01).clamp(0, 1)
    expected = 10 * math.log10(1 / torch.mean((a.double() - b.double()) ** 2).item())
    assert isinstance(digits_psnr(a, b), float)
    assert digits_psnr(a, b) == pytest.approx(expected, rel=1e-12)
    assert digits_psnr(a, b) == M.psnr(a, b, data_range=1.0) and digits_psnr(a, a) == math.inf


def test_core_import_stays_light_and_psnr_works_without_scikit_image():
    code = ("import sys; sys.modules['skimage'] = None\n"  # scikit-image "not installed"
            "import dit_cache_fx.metrics as m\n"
            "assert not {'torch', 'PIL', 'scipy'} & set(sys.modules), sorted(sys.modules)\n"
            "import torch\n"
            "from dit_cache_fx.digits.metrics import psnr\n"
            "assert psnr(torch.zeros(2, 1, 4, 4), torch.full((2, 1, 4, 4), 0.1)) > 0\n"
            "try:\n"
            "    m.ssim(torch.zeros(16, 16), torch.zeros(16, 16), 1.0)\n"
            "except m.MissingExtraError as e:\n"
            "    assert isinstance(e, ImportError) and 'dit-cache-fx[metrics]' in str(e), e\n"
            "else:\n"
            "    raise AssertionError('ssim ran without scikit-image')\n")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO, timeout=120)


def test_ssim_identical_is_one_and_matches_scikit_image():
    a = _image(1, (32, 32))
    b = np.clip(a.astype(int) + np.random.default_rng(2).integers(-20, 21, a.shape), 0, 255).astype(np.uint8)
    assert M.ssim(a, a, 255) == pytest.approx(1.0)
    wang = structural_similarity(a, b, data_range=255, channel_axis=-1, gaussian_weights=True, sigma=1.5,
                                 use_sample_covariance=False)
    assert M.ssim(a, b, 255) == pytest.approx(wang, rel=1e-12) and wang < 1
    default = structural_similarity(a, b, data_range=255, channel_axis=-1)  # cache-dit 1.5.3's call
    assert M.ssim(a, b, 255, window="uniform") == pytest.approx(default, rel=1e-12)
    # channel-first torch batches: the mean of the per-image values
    t = torch.from_numpy(np.stack([a, b])).permute(0, 3, 1, 2)
    assert M.ssim(t, torch.from_numpy(np.stack([b, b])).permute(0, 3, 1, 2), 255) == pytest.approx((wang + 1) / 2)


def test_ssim_too_small_an_image_is_a_clear_error():
    with pytest.raises(M.MetricsError, match="at least 11x11"):
        M.ssim(np.zeros((8, 8)), np.zeros((8, 8)), 1.0)


def test_data_range_rule():
    assert M.value_range(np.zeros(3, np.uint8)) == (0, 255)
    assert M.value_range(np.zeros(3, np.uint16)) == (0, 65535)
    assert M.value_range(np.array([0.0, 1.0], np.float32)) == (0, 1)
    assert M.value_range(torch.tensor([-1.0, 0.5], dtype=torch.bfloat16)) == (-1, 1)
    assert M.value_range(np.array([0.0, 200.0])) == (0, 255)
    assert M.value_range(np.array([0, 1000], np.int64)) == (0, 65535)
    for bad in (np.array([0.0, 300.0]), np.array([0.0, np.nan]), np.array([-5, 3])):
        with pytest.raises(M.MetricsError):
            M.value_range(bad)


# --- files --------------------------------------------------------------------------------------------------


def test_mean_is_of_per_image_psnr_and_names_match_in_subfolders(tmp_path):
    a, b = _image(3), _image(4)
    _png(tmp_path / "ref/x.png", a), _png(tmp_path / "test/x.png", a + np.uint8(5))
    _png(tmp_path / "ref/sub/y.png", b), _png(tmp_path / "test/sub/y.png", b + np.uint8(10))
    r = M.compare(tmp_path / "ref", tmp_path / "test")
    assert [p.name for p in r.pairs] == ["sub/y.png", "x.png"] and r.count == 2 and r.files == 2
    per_image = [OFFSET5_PSNR, 10 * math.log10(255**2 / 100)]
    assert r.psnr == pytest.approx(np.mean(per_image))
    assert r.psnr != pytest.approx(10 * math.log10(255**2 / 62.5))  # not the PSNR of the mean MSE
    assert r.mse == pytest.approx(62.5) and 0 < r.ssim < 1
    assert {p.data_range for p in r.pairs} == {255.0}


def test_cli_json_and_table(tmp_path):
    a, b = _image(5), _image(6, channels=1)
    _png(tmp_path / "ref/a.png", a), _png(tmp_path / "test/a.png", a)
    _png(tmp_path / "ref/d/b.png", b), _png(tmp_path / "test/d/b.png", b + np.uint8(5))
    proc = _cli(tmp_path, tmp_path / "ref", tmp_path / "test", "--json")
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert {"psnr", "ssim", "mse", "pairs", "count"} <= out.keys() and out["count"] == 2
    assert out["psnr"] == "inf"  # one identical pair: the mean of the per-image PSNRs is inf
    rows = {p["name"]: p for p in out["pairs"]}
    assert rows["a.png"]["psnr"] == "inf" and rows["a.png"]["ssim"] == pytest.approx(1.0)
    assert rows["d/b.png"]["psnr"] == pytest.approx(OFFSET5_PSNR) and rows["d/b.png"]["mse"] == 25.0

    table = _cli(tmp_path, tmp_path / "ref", tmp_path / "test", "--per-pair").stdout
    assert "PSNR dB" in table and "d/b.png" in table and "34.15" in table
    mean_row = [ln for ln in table.splitlines() if ln.startswith("mean")][0]
    assert mean_row.split()[2] == "inf"
    assert "d/b.png" not in _cli(tmp_path, tmp_path / "ref", tmp_path / "test").stdout  # mean row only


def test_tensor_files_batches_and_videos(tmp_path):
    g = torch.Generator().manual_seed(0)
    ref = torch.rand(3, 3, 16, 16, generator=g)  # [N, C, H, W] floats in [0, 1]: data range 1
    (tmp_path / "ref").mkdir(), (tmp_path / "test").mkdir()
    torch.save(ref, tmp_path / "ref/batch.pt"), torch.save(ref.clamp(0, 0.9), tmp_path / "test/batch.pt")
    video = np.random.default_rng(0).integers(0, 250, (2, 2, 3, 12, 12), dtype=np.uint8)  # [N, T, C, H, W]
    np.save(tmp_path / "ref/video.npy", video), np.save(tmp_path / "test/video.npy", video + np.uint8(5))
    r = M.compare(tmp_path / "ref", tmp_path / "test")
    assert [p.name for p in r.pairs] == ["batch.pt[0]", "batch.pt[1]", "batch.pt[2]",
                                         "video.npy[0,0]", "video.npy[0,1]", "video.npy[1,0]", "video.npy[1,1]"]
    assert [p.data_range for p in r.pairs] == [1.0] * 3 + [255.0] * 4
    assert r.pairs[0].values["psnr"] == pytest.approx(M.psnr(ref[0], ref[0].clamp(0, 0.9), 1.0))
    assert all(p.values["psnr"] == pytest.approx(OFFSET5_PSNR) for p in r.pairs[3:])
    # two single files: compared as they are, whatever their names
    one = M.compare(tmp_path / "ref/batch.pt", tmp_path / "test/batch.pt", metrics="psnr")
    assert one.count == 3 and one.metrics == ["psnr"]
    # an integer reference against a float test is a scale mistake; --data-range decides the peak
    np.save(tmp_path / "test/video.npy", video / 255.0)
    with pytest.raises(M.MetricsError, match="one integer, one float"):
        M.compare(tmp_path / "ref", tmp_path / "test")
    wide = M.compare(tmp_path / "ref/batch.pt", tmp_path / "test/batch.pt", metrics="psnr", data_range=2.0)
    assert wide.psnr == pytest.approx(one.psnr + 20 * math.log10(2))


def test_a_damaged_file_is_a_clear_error(tmp_path):
    _png(tmp_path / "ref/a.png", _image(11))
    (tmp_path / "test").mkdir()
    (tmp_path / "test/a.png").write_bytes(b"not a png")
    _expect_error(_cli(tmp_path, tmp_path / "ref", tmp_path / "test"), "cannot read", "a.png")


def test_cli_errors_are_one_line_with_exit_code_2(tmp_path):
    for n in ("a.png", "b.png", "c.png"):
        _png(tmp_path / "ref" / n, _image(7))
    for n in ("a.png", "z.png"):
        _png(tmp_path / "test" / n, _image(7))
    _expect_error(_cli(tmp_path, tmp_path / "ref", tmp_path / "test"),
                  "2 only in REF (b.png, c.png)", "1 only in TEST (z.png)")
    _expect_error(_cli(tmp_path, tmp_path / "ref", tmp_path / "missing"), "does not exist", "missing")
    (tmp_path / "empty").mkdir()
    _expect_error(_cli(tmp_path, tmp_path / "empty", tmp_path / "test"), "no images")
    _png(tmp_path / "big/a.png", _image(7, (32, 24)))
    _expect_error(_cli(tmp_path, tmp_path / "ref/a.png", tmp_path / "big/a.png"), "sizes differ", "24x24x3", "32x24x3")
    _expect_error(_cli(tmp_path, tmp_path / "ref", tmp_path / "test", "--metrics", "psnr,bogus"), "unknown metric bogus")


# --- optional metrics ---------------------------------------------------------------------------------------


def test_unavailable_optional_metrics_note_and_the_rest_still_computed(tmp_path):
    a = _image(8)
    _png(tmp_path / "ref/a.png", a), _png(tmp_path / "test/a.png", a + np.uint8(5))
    proc = _cli(tmp_path, tmp_path / "ref", tmp_path / "test", "--metrics", "psnr,lpips,fid,clip", "--json")
    assert proc.returncode == 0, proc.stderr
    notes = proc.stderr.strip().splitlines()
    assert [n.split()[1] for n in notes] == ["lpips", "fid", "clip"], notes
    assert all(n.startswith("note:") and "to use it" in n for n in notes)
    assert "pip install lpips" in notes[0] and "alexnet-owt-7be5be79.pth" in notes[0]
    assert "pytorch-fid" in notes[1] and "hf download openai/clip-vit-large-patch14" in notes[2]
    out = json.loads(proc.stdout)
    assert out["metrics"] == ["psnr"] and out["psnr"] == pytest.approx(OFFSET5_PSNR) and out["notes"] == notes


def test_availability_checks_look_for_the_package_and_the_weights(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    monkeypatch.setattr(M, "_missing_modules", lambda names: [])  # as if lpips / pytorch-fid were installed
    assert "not in " + str(tmp_path / "hub" / "checkpoints") in M.unavailable("fid")
    weights = tmp_path / "hub/checkpoints/pt_inception-2015-12-05-6726825d.pth"
    weights.parent.mkdir(parents=True)
    weights.write_bytes(b"")
    assert M.unavailable("fid") is None and M.unavailable("lpips") is not None
    monkeypatch.setattr(M, "_missing_modules", lambda names: list(names[:1]))
    assert M.unavailable("fid").startswith("pytorch_fid not installed")
    monkeypatch.undo()

    folder = tmp_path / "clip"
    folder.mkdir()
    assert "lacks config.json" in M.unavailable("clip", str(folder))
    for f in ("config.json", "preprocessor_config.json", "model.safetensors"):
        (folder / f).write_text("{}")
    assert M.unavailable("clip", str(folder)) is None


def test_clip_runs_offline_from_a_local_folder(tmp_path):
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel

    torch.manual_seed(0)
    small = {"hidden_size": 32, "intermediate_size": 37, "num_hidden_layers": 1, "num_attention_heads": 2}
    config = CLIPConfig(text_config={**small, "vocab_size": 99},
                        vision_config={**small, "image_size": 32, "patch_size": 8}, projection_dim=16)
    CLIPModel(config).save_pretrained(tmp_path / "clip")
    CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(tmp_path / "clip")
    a = np.stack([_image(9), _image(10)])
    b = np.stack([a[0], 255 - a[1]])
    r = M.compare(a, b, metrics="psnr,clip", clip_model=str(tmp_path / "clip"))
    assert r.metrics == ["psnr", "clip"] and not r.notes
    assert r.pairs[0].values["clip"] == pytest.approx(100, abs=1e-3) and r.pairs[1].values["clip"] < 100
