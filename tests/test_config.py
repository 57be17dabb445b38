import pytest

from dit_cache_fx import CacheConfig


@pytest.mark.parametrize("spec, fields", [
    ("F8B0", dict(Fn_compute_blocks=8, Bn_compute_blocks=0)),
    ("F1B0_W2_R0.2", dict(Fn_compute_blocks=1, max_warmup_steps=2, residual_diff_threshold=0.2)),
    ("F8B0_W8I1M-1MC3_R0.08", dict(max_cached_steps=-1, max_continuous_cached_steps=3)),
    ("R0.12_MC3_F4B2", dict(Fn_compute_blocks=4, Bn_compute_blocks=2, max_continuous_cached_steps=3,
                            residual_diff_threshold=0.12)),
    ("F1B0_W4I2M5MC2_R0.3_T2_CFG1", dict(warmup_interval=2, max_cached_steps=5, taylorseer_order=2,
                                          enable_separate_cfg=True)),
    # cache-dit's printed names: M0/MC0 mean unlimited there
    ("DBCache_F8B0_W8I1M0MC0_R0.08", dict(max_cached_steps=-1, max_continuous_cached_steps=-1)),
    ("DBCache_F1B0_W8I1M0MC3_R0.12_CFG0_T1O2_S17", dict(taylorseer_order=2, enable_separate_cfg=False,
                                                         max_continuous_cached_steps=3)),
    ("F8B0_W4MC0_T0O1_R0.08", dict(taylorseer_order=0, max_warmup_steps=4)),
    ("F1_T2_ET0", dict(taylorseer_order=2, taylorseer_encoder=False)),
])
def test_parse(spec, fields):
    c = CacheConfig.parse(spec)
    for k, v in fields.items():
        assert getattr(c, k) == v, k
    assert CacheConfig.parse(str(c)) == c


def test_defaults_are_cache_dits():
    c = CacheConfig.parse("F8B0")
    assert c == CacheConfig()
    assert (c.residual_diff_threshold, c.max_warmup_steps, c.warmup_interval) == (0.08, 8, 1)
    assert (c.max_cached_steps, c.max_continuous_cached_steps, c.taylorseer_order) == (-1, -1, 0)
    assert str(c) == "F8B0_W8I1M0MC0_R0.08"


@pytest.mark.parametrize("spec, message", [
    ("", "non-empty"),
    ("F8X", "cannot parse 'X'"),
    ("F8_F2", "given twice"),
    ("F", "cannot parse"),
    ("F0B0", "Fn_compute_blocks=0"),
    ("F1B-1", "Bn_compute_blocks=-1"),
    ("F1_I0", "warmup_interval=0"),
    ("F1_CFG2", "CFG takes 0 or 1"),
    ("F1_T9", "taylorseer_order=9"),
    ("F1_Rabc", "cannot parse"),
])
def test_bad_specs(spec, message):
    with pytest.raises(ValueError, match=message):
        CacheConfig.parse(spec)


def test_ambiguous_zero_caps_rejected():
    with pytest.raises(ValueError, match="residual_diff_threshold=0"):
        CacheConfig(max_continuous_cached_steps=0)
    with pytest.raises(TypeError):
        import dit_cache_fx.config as cfgmod

        cfgmod.as_config(3)
