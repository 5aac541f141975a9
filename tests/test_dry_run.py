"""``mtd train CONFIG --dry-run``: the parameter count, the memory and step-time estimates, and the verdict against
a device's memory (exit 0 or a one-line ConfigError naming trainer.batch_size), without training or writing."""

from __future__ import annotations

import re
from pathlib import Path

import attrs
import pytest
import torch

from mtd_core.cli import main
from mtd_core.training.memory import StepTiming, extrapolate_seconds

CONFIG = str(Path(__file__).parent.parent / "examples" / "configs" / "image_label.toml")


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    rc = main(["train", CONFIG, "--dry-run", *argv])
    out, err = capsys.readouterr()
    return rc, out, err


def test_dry_run_prints_the_real_parameter_count_and_writes_nothing(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    from mtd_core.training import build_run, read_config

    monkeypatch.chdir(tmp_path)
    rc, out, err = _run(capsys, "--out", str(tmp_path / "run"), "--device", "cpu")
    assert rc == 0, err
    assert list(tmp_path.iterdir()) == []  # neither --out nor anything in the working folder
    shown = re.search(r"parameters +([\d,]+) ", out)
    assert shown is not None, out
    real = build_run(read_config(CONFIG), check_data=False).model
    assert int(shown.group(1).replace(",", "")) == sum(p.numel() for p in real.parameters())
    assert "no data read" in out
    assert re.search(r"the batch of 64: [\d.]+ [KMG]iB", out)
    step = re.search(r"step time +about ([\d.e+-]+) s per step of 64\. An estimate: .* on this machine's CPU", out)
    assert step is not None and float(step.group(1)) > 0, out
    assert "result       the batch of 64 fits cpu" in out


def test_a_batch_beyond_the_given_memory_exits_1_naming_trainer_batch_size(capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, err = _run(capsys, "--set", "trainer.batch_size=100000", "--device", "cpu", "--device-memory", "1")
    assert rc == 1
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert err.startswith("mtd train: error: trainer.batch_size = 100000 needs about ")
    assert "above the 1 GiB given by --device-memory" in err
    assert "does NOT fit cpu" in out and "parameters" in out  # the report comes first
    # the same batch fits a device with more memory than its estimate
    estimate = float(re.search(r"needs about ([\d.]+) GiB", err).group(1))  # type: ignore[union-attr]
    rc, out, err = _run(capsys, "--set", "trainer.batch_size=100000", "--device", "cpu",
                        "--device-memory", str(2 * estimate))
    assert rc == 0 and err == "" and "the batch of 100000 fits cpu" in out


def test_device_cuda_with_its_memory_works_without_cuda(capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, err = _run(capsys, "--device", "cuda", "--device-memory", "80")
    assert rc == 0, err
    assert "device       cuda: 80 GiB (given by --device-memory)" in out
    if not torch.cuda.is_available():
        assert "step time    not measured (no such device here); about " in out  # estimated from counted FLOPs
        assert "TFLOP/s sustained (40% of an H100 SXM's" in out
        rc, out, err = _run(capsys, "--device", "cuda")  # without its memory there is nothing to check against
        assert rc == 1 and out == "" and len(err.strip().splitlines()) == 1
        assert err.startswith("mtd train: error: --device 'cuda': no such device") and "--device-memory" in err


@pytest.mark.parametrize("argv", [["--device-memory", "-1"], ["--device-memory=abc"], ["--device-memory", "0"],
                                  ["--device-memory", "nan"], ["--device-memory", "inf"], ["--device", "nodevice"]])
def test_a_bad_device_option_is_one_line_naming_it(capsys: pytest.CaptureFixture[str], argv: list[str]) -> None:
    rc, out, err = _run(capsys, *argv)
    assert rc == 1 and out == ""
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert err.startswith(f"mtd train: error: {argv[0].split('=')[0]} ")


def test_out_stays_required_without_dry_run_and_the_device_options_need_it(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["train", CONFIG])
    assert exit_info.value.code == 2 and "--out" in capsys.readouterr().err
    assert main(["train", CONFIG, "--out", "unused", "--device-memory", "80"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("mtd train: error: --device-memory goes with --dry-run only") and not Path("unused").exists()


def _timing(batch: int, seconds: float) -> StepTiming:
    return StepTiming(batch_size=batch, passes=2, seconds=seconds, device="cpu", threads=1)


def test_step_time_is_extrapolated_along_the_line_through_the_timed_batches() -> None:
    # a fixed 0.6 s per pass plus 0.1 s per example
    assert extrapolate_seconds([_timing(4, 1.0), _timing(16, 2.2)], 64) == pytest.approx(7.0)
    # timing noise that makes the larger batch faster: the larger batch's time scaled in proportion
    assert extrapolate_seconds([_timing(4, 1.0), _timing(16, 0.8)], 64) == pytest.approx(3.2)
    assert extrapolate_seconds([_timing(8, 0.5)], 64) == pytest.approx(4.0)


def test_gradient_accumulation_counts_one_micro_step(capsys: pytest.CaptureFixture[str]) -> None:
    from mtd_core.training.config import TrainConfig

    if "accumulate" not in attrs.fields_dict(TrainConfig):
        pytest.skip("trainer.accumulate is not a key of this trainer config")
    big = ("--set", "trainer.batch_size=100000", "--device", "cpu", "--device-memory", "12")
    rc, _, err = _run(capsys, *big)
    assert rc == 1 and "trainer.batch_size = 100000" in err
    rc, out, err = _run(capsys, *big, "--set", "trainer.accumulate=4")
    assert rc == 0, err
    assert "a micro-step of 25000 (trainer.accumulate = 4)" in out and "x 4 micro-steps" in out
