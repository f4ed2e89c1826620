"""The GPU path's device handling, checked on the CPU: model copies per device, once-only
cuDNN setup, the bf16 decision, GPU numbering under CUDA_VISIBLE_DEVICES, explicit device
selection and the ``--device`` flag."""

from __future__ import annotations

import copy
import sys
import threading
import types
from typing import Any

import pytest
import torch
from resflow_dask.settings import DaskConfig
from typer.testing import CliRunner

import resflow.devices as devices
from resflow import stages
from resflow.devices import (
    autocast_dtype,
    configure_cuda_once,
    inference_context,
    use_device,
)
from resflow.errors import ConfigError, ResflowError
from resflow.gpu_numbers import physical_gpu, torch_ordinal

CPU = torch.device("cpu")
META = torch.device("meta")


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU()).eval()


# -- 1: shared models are never moved in place --------------------------------------------


def test_prepare_on_cpu_returns_the_model_itself() -> None:
    model = _model()
    assert stages._prepare(model, CPU) is model


def test_device_copy_leaves_the_original_and_is_cached_per_device() -> None:
    model = _model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    moved = stages._prepare(model, META)
    assert moved is not model
    assert all(p.device.type == "meta" for p in moved.parameters())
    assert all(p.device.type == "cpu" for p in model.parameters())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert stages._prepare(model, META) is moved  # one copy per (model, device)
    assert stages._device_copy(model, torch.device("meta", 0)) is not moved
    assert stages._DEVICE_COPIES["meta"][id(model)] is moved
    assert stages._DEVICE_COPIES["meta:0"][id(model)] is not moved
    other = _model()
    assert stages._device_copy(other, META) is not moved  # keyed by model, too


def test_parts_shared_by_models_are_copied_once_per_device() -> None:
    """The encoder inside every segmenter is one module; its device copy is one, too."""
    encoder = _model()
    first = torch.nn.Sequential(encoder, torch.nn.Conv2d(4, 1, 1))
    second = torch.nn.Sequential(encoder, torch.nn.Conv2d(4, 1, 1))
    a, b = stages._prepare(first, META), stages._prepare(second, META)
    assert a[0] is b[0] and a[0] is not encoder
    assert stages._prepare(encoder, META) is a[0]
    assert all(p.device.type == "meta" for p in b.parameters())
    assert all(p.device.type == "cpu" for p in second.parameters())


def test_device_copy_is_made_once_under_concurrent_first_use() -> None:
    model = _model()
    got: list[torch.nn.Module] = []
    threads = [threading.Thread(target=lambda: got.append(stages._device_copy(model, META)))
               for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len({id(m) for m in got}) == 1


# -- 2: cuDNN flags set once per process, never by the CPU path ---------------------------


@pytest.fixture
def fresh_cuda_setup(monkeypatch: pytest.MonkeyPatch) -> None:
    """Pretend this process has not used CUDA yet; put cuDNN's global flags back after."""
    monkeypatch.setattr(devices, "_CUDA_SETUP_DONE", False)
    for flag in ("enabled", "benchmark", "deterministic"):
        monkeypatch.setattr(torch.backends.cudnn, flag, getattr(torch.backends.cudnn, flag))


def test_cuda_setup_is_made_once(fresh_cuda_setup: None) -> None:
    torch.backends.cudnn.deterministic = False
    torch.backends.cudnn.benchmark = True
    assert configure_cuda_once() is True
    assert torch.backends.cudnn.deterministic and not torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = True  # a later change is not undone by a second call
    assert configure_cuda_once() is False
    assert torch.backends.cudnn.benchmark is True


def test_cpu_inference_touches_no_cudnn_state(fresh_cuda_setup: None) -> None:
    torch.backends.cudnn.deterministic = False
    with inference_context(CPU):
        assert torch.is_inference_mode_enabled()
    assert devices._CUDA_SETUP_DONE is False
    assert torch.backends.cudnn.deterministic is False


# -- 3: bf16 only where the task's GPU has it natively ------------------------------------


@pytest.mark.parametrize(("capability", "dtype"), [
    ((6, 1), torch.float16), ((7, 0), torch.float16), ((7, 5), torch.float16),
    ((8, 0), torch.bfloat16), ((8, 6), torch.bfloat16), ((9, 0), torch.bfloat16),
])
def test_autocast_dtype_follows_compute_capability(capability: tuple[int, int],
                                                   dtype: torch.dtype) -> None:
    assert autocast_dtype(capability) == dtype


# -- 4: physical GPU ids and torch ordinals -----------------------------------------------


def test_torch_ordinal_under_cuda_visible_devices() -> None:
    assert torch_ordinal("5", "4,5") == 1
    assert torch_ordinal("4", "4,5") == 0
    assert torch_ordinal("cuda:5", " 4, 5 ") == 1
    assert torch_ordinal("GPU-abc", "GPU-xyz,GPU-abc") == 1
    assert torch_ordinal("3", None) == 3  # unset: every GPU, physical order
    assert torch_ordinal(2, None) == 2


@pytest.mark.parametrize("visible", ["4,5", "", "0"])
def test_invisible_gpu_is_a_clear_error(visible: str) -> None:
    with pytest.raises(ConfigError, match="CUDA_VISIBLE_DEVICES"):
        torch_ordinal("3", visible)


def test_physical_gpu_reverses_torch_ordinal() -> None:
    assert physical_gpu("1", "4,5") == "5"
    assert physical_gpu(0, "4,5") == "4"
    assert physical_gpu("cuda:3", None) == "3"
    for ordinal in range(2):
        assert torch_ordinal(physical_gpu(ordinal, "6,2"), "6,2") == ordinal
    with pytest.raises(ConfigError, match="CUDA_VISIBLE_DEVICES"):
        physical_gpu("2", "4,5")
    with pytest.raises(ConfigError, match="not a torch device number"):
        physical_gpu("x", None)


def test_dask_cuda_workers_get_physical_gpu_ids(monkeypatch: pytest.MonkeyPatch,
                                               tmp_path: Any) -> None:
    """The embedded dask-cuda cluster gets the GPUs the parent calls cuda:0, cuda:1 as the
    physical ids behind them, not as 0 and 1."""
    from resflow_dask import _embedded_cluster

    seen: dict[str, Any] = {}
    fake = types.ModuleType("dask_cuda")
    fake.LocalCUDACluster = lambda **kw: seen.update(kw) or "cluster"  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "dask_cuda", fake)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "4,5")
    assert _embedded_cluster(DaskConfig(), ["0", "1"], str(tmp_path)) == ("cluster", True)
    assert seen["CUDA_VISIBLE_DEVICES"] == "4,5"
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "4,5")
    _embedded_cluster(DaskConfig(), ["1"], str(tmp_path))
    assert seen["CUDA_VISIBLE_DEVICES"] == "5"
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    _embedded_cluster(DaskConfig(), ["0", "1"], str(tmp_path))
    assert seen["CUDA_VISIBLE_DEVICES"] == "0,1"


# -- 6: explicit device selection ---------------------------------------------------------


def test_use_device_on_cpu_is_a_no_op(monkeypatch: pytest.MonkeyPatch,
                                      fresh_cuda_setup: None) -> None:
    def refuse(*_: Any) -> None:
        raise AssertionError("torch.cuda.set_device called for a CPU task")

    monkeypatch.setattr(torch.cuda, "set_device", refuse)
    use_device(CPU)
    use_device(META)
    assert devices._CUDA_SETUP_DONE is False


def test_use_device_selects_a_cuda_device(monkeypatch: pytest.MonkeyPatch,
                                          fresh_cuda_setup: None) -> None:
    chosen: list[torch.device] = []
    monkeypatch.setattr(torch.cuda, "set_device", chosen.append)
    use_device(torch.device("cuda", 1))
    assert chosen == [torch.device("cuda", 1)]
    assert devices._CUDA_SETUP_DONE is True


# -- 7: resflow run --device ---------------------------------------------------------------


def _run_cli(monkeypatch: pytest.MonkeyPatch, *flags: str) -> tuple[Any, dict[str, Any]]:
    import resflow.config
    from resflow.cli import app

    seen: dict[str, Any] = {}

    def fake_load_config(path: Any, model: Any, **overrides: Any) -> Any:
        seen.update(overrides)
        raise ResflowError("command line", "stop here", "nothing")

    monkeypatch.setattr(resflow.config, "load_config", fake_load_config)
    result = CliRunner().invoke(app, ["run", "archive.zarr", "--out", "maps.zarr", *flags])
    return result, seen


@pytest.mark.parametrize(("flags", "expected"), [
    ((), None), (("--device", "cpu"), "cpu"), (("--device", "CUDA"), "cuda"),
    (("--device", "auto", "--batch-size", "8"), "auto"),
])
def test_run_passes_device_flag(monkeypatch: pytest.MonkeyPatch, flags: tuple[str, ...],
                                expected: str | None) -> None:
    result, seen = _run_cli(monkeypatch, *flags)
    assert result.exit_code == 2 and "stop here" in result.output
    assert seen["device"] == expected


def test_run_refuses_unknown_device(monkeypatch: pytest.MonkeyPatch) -> None:
    result, seen = _run_cli(monkeypatch, "--device", "gpu")
    assert result.exit_code == 2 and seen == {}
    assert "gpu" in result.output


def test_weights_cast_once_give_autocasts_bits() -> None:
    """A GPU copy's convolution and linear weights are cast once to the autocast dtype; under
    autocast the encoder and decoder then give the float32 model's results bit for bit
    (checked with the CPU's bf16 autocast, the GPU's being absent here)."""
    from resflow.inference.caches import load_gallery

    segmenter = load_gallery(None).segmenter(0).eval()
    cast = devices.cast_for_autocast(copy.deepcopy(segmenter), torch.bfloat16)
    convolutions = [m for m in cast.modules() if isinstance(m, torch.nn.Conv2d)]
    norms = [m for m in cast.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert convolutions and all(m.weight.dtype == torch.bfloat16 for m in convolutions)
    assert norms and all(m.weight.dtype == torch.float32 for m in norms)
    images = torch.rand((2, 3, 96, 96), generator=torch.Generator().manual_seed(0))
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        assert torch.equal(cast(images), segmenter(images))
