"""`precision: auto`: bf16-mixed only where bf16 matmuls run in hardware (GPUs, CPUs with AVX-512 BF16 or AMX),
fp32 elsewhere; an explicit setting is kept as given."""

from __future__ import annotations

import pytest

from minigpt_ray.config import ConfigError, TrainJobConfig
from minigpt_ray.modeling import model as modeling
from minigpt_ray.training import trainer


@pytest.mark.parametrize(
    ("native", "use_gpu", "expected"),
    [(True, False, "bf16-mixed"), (False, False, "fp32"), (False, True, "bf16-mixed"), (True, True, "bf16-mixed")],
)
def test_auto_picks_bf16_only_where_the_hardware_has_it(monkeypatch, native, use_gpu, expected):
    monkeypatch.setattr(trainer, "cpu_has_native_bf16", lambda: native)
    assert trainer.resolve_precision("auto", use_gpu) == expected


def test_explicit_settings_are_kept(monkeypatch):
    monkeypatch.setattr(trainer, "cpu_has_native_bf16", lambda: False)
    for setting in ("fp32", "bf16-mixed", "bf16"):
        assert trainer.resolve_precision(setting, use_gpu=False) == setting


def test_cpu_flags_decide_native_bf16(monkeypatch, tmp_path):
    import builtins

    real_open = builtins.open
    for flags, expected in (("fpu avx2 avx512f", False), ("fpu avx512f avx512_bf16", True), ("amx_bf16 sse", True)):
        cpuinfo = tmp_path / "cpuinfo"
        cpuinfo.write_text(f"processor\t: 0\nflags\t\t: {flags}\n")
        monkeypatch.setattr(
            builtins,
            "open",
            lambda path, *a, _f=cpuinfo, **k: real_open(_f if path == "/proc/cpuinfo" else path, *a, **k),
        )
        assert modeling.cpu_has_native_bf16() is expected


def test_auto_is_the_default_and_unknown_precisions_fail():
    assert TrainJobConfig().train.precision == "auto"
    cfg = TrainJobConfig()
    cfg.train.precision = "int8"
    with pytest.raises(ConfigError, match="^train.precision: must be one of auto, fp32"):
        cfg.validate()
