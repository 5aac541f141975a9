"""The mtd command gives no wrong answer in silence: values read strictly, a name given twice refused, a Ctrl-C or a
closed stdout ended in one line (or none), the guidance applied printed, one-line errors for bad paths and seeds."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch

from mtd_core.cli import main
from mtd_core.cli.sample_args import parse_options, parse_temperatures
from mtd_core.errors import ConfigError
from mtd_core.tomlio import dumps_toml
from mtd_core.training import load_checkpoint

from test_cli import TINY, _run

ROOT = Path(__file__).parent.parent


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 3-step image + label run (``root/run``) and its config (``root/tiny.toml``)."""
    root = tmp_path_factory.mktemp("cli_strict")
    (root / "tiny.toml").write_text(dumps_toml(TINY))
    assert main(["train", str(root / "tiny.toml"), "--out", str(root / "run"), "--no-progress"]) == 0
    return root


@pytest.mark.parametrize("text, value", [("false", False), ("False", False), ("no", False), ("0", False),
                                         ("true", True), ("TRUE", True), ("yes", True), ("1", True)])
def test_a_boolean_sampler_option_reads_the_boolean_words(text: str, value: bool) -> None:
    assert parse_options([f"lower_order_final={text}"], "dpmpp_2m") == {"lower_order_final": value}


@pytest.mark.parametrize("item, message", [
    ("lower_order_final=maybe", "--option lower_order_final=maybe: expected a boolean (true/false, yes/no or 1/0), "
                                "got 'maybe'"),
    ("lower_order_final=2", "expected a boolean"),
    ("lower_order_final=", "expected a boolean"),
    ("eta=yes", "--option eta=yes: expected a number, got 'yes'"),
    ("eta=true", "--option eta=true: expected a number"),
])
def test_a_sampler_option_of_the_wrong_type_is_an_error_naming_it(item: str, message: str) -> None:
    with pytest.raises(ConfigError) as e:
        parse_options([item], "dpmpp_2m")
    assert message in str(e.value)


def test_sampler_options_keep_their_types_and_refuse_a_key_given_twice() -> None:
    assert parse_options(["eta=1", "lower_order_final=no"], "dpmpp_2m") == {"eta": 1.0, "lower_order_final": False}
    assert isinstance(parse_options(["eta=1"], "dpmpp_2m")["eta"], float)
    assert parse_options(["variance=1"], "ddpm") == {"variance": "1"}  # a string option stays the text given
    assert parse_options(["whatever=maybe"], "no_such_sampler") == {"whatever": "maybe"}  # generate names the sampler
    with pytest.raises(ConfigError, match=r"--option: option 'eta' is given twice \(eta=0.5 and eta=1\)"):
        parse_options(["eta=0.5", "eta=1"], "dpmpp_2m")
    with pytest.raises(ConfigError, match=r"--encoding-temperature: modality 'label' is given twice"):
        parse_temperatures(["label=0.5", "label=1"])


def test_plugins_validate_refuses_an_option_given_twice(capsys: pytest.CaptureFixture[str]) -> None:
    rc, _, err = _run(capsys, "plugins", "validate", "label", "--option", "num_classes=3", "--option",
                      "num_classes=4")
    assert rc == 2 and err.strip() == ("mtd plugins validate: error: --option: option 'num_classes' is given twice "
                                       "(num_classes=3 and num_classes=4); give it once")


def test_sample_refuses_a_bad_option_and_a_modality_given_twice(tiny_run: Path, tmp_path: Path,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    run, out = str(tiny_run / "run"), str(tmp_path / "s")
    rc, _, err = _run(capsys, "sample", run, "--out", out, "--sampler", "dpmpp_2m", "--option",
                      "lower_order_final=maybe")
    assert rc == 1 and err.strip() == ("mtd sample: error: --option lower_order_final=maybe: expected a boolean "
                                       "(true/false, yes/no or 1/0), got 'maybe'")
    rc, _, err = _run(capsys, "sample", run, "--out", out, "--given", "label=1", "--given", "label=2")
    assert rc == 1 and "--given: modality 'label' is given twice (label=1 and label=2)" in err
    assert len(err.strip().splitlines()) == 1 and not (tmp_path / "s").exists()


def test_sample_prints_the_guidance_it_applied(tiny_run: Path, tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    run = str(tiny_run / "run")
    common = ["--given", "label=3", "--n", "2", "--steps", "2", "--no-progress"]
    rc, out, err = _run(capsys, "sample", run, "--out", str(tmp_path / "a"), *common, "--guidance", "2")
    assert rc == 0, err
    assert "classifier-free guidance 1.5, classifier guidance 2 towards the given 'label' by the model's own head" \
        in out, out
    rc, out, err = _run(capsys, "sample", run, "--out", str(tmp_path / "b"), *common, "--cfg-scale", "1")
    assert rc == 0 and "no classifier-free guidance" in out and "classifier guidance" not in out, out


def test_sample_help_speaks_of_any_modality() -> None:
    import argparse

    from mtd_core.cli import build_parser

    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    guidance = next(a for a in sub.choices["sample"]._actions if "--guidance" in a.option_strings)
    assert guidance.help is not None and "the given modality's value" in guidance.help
    assert "label" not in guidance.help


def test_eval_prints_scores_as_fractions_like_its_json() -> None:
    from mtd_core.cli.eval import format_score

    assert [format_score(v) for v in (0.98611, 0.5, 1.0, 1.234e-5)] == ["0.9861", "0.5", "1", "1.234e-05"]


def test_a_ctrl_c_during_the_final_grid_keeps_the_saved_run(tiny_run: Path, tmp_path: Path,
                                                            capsys: pytest.CaptureFixture[str],
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    from mtd_core.training import Trainer

    def interrupted(self: Trainer, *args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(Trainer, "sample_grid", interrupted)
    run = tmp_path / "run"
    rc, out, err = _run(capsys, "train", str(tiny_run / "tiny.toml"), "--out", str(run), "--quick")
    assert rc == 0 and err == "", err
    ckpt = run / "checkpoints" / "step_00000004"
    assert out.splitlines()[-1] == (f"mtd train: interrupted after the last step; checkpoint of step 4 saved to "
                                    f"{ckpt}; the final sample grid was skipped.")
    assert load_checkpoint(run).step == 4 and not (run / "samples").exists()
    monkeypatch.setattr(Trainer, "save", interrupted)  # before the checkpoint: nothing is saved, status 130
    rc, out, err = _run(capsys, "train", str(tiny_run / "tiny.toml"), "--out", str(tmp_path / "run2"), "--quick")
    assert rc == 130 and err == "mtd: interrupted\n" and "skipped" not in out


def test_a_stopped_demo_writes_no_report(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    from mtd_core.training import Trainer

    fit = Trainer.fit
    monkeypatch.setattr(Trainer, "fit", lambda self, *a, **kw: (self.request_stop("SIGINT"), fit(self, *a, **kw))[1])
    rc, _, err = _run(capsys, "demo", "--quick", "--out", str(tmp_path / "d"), "--no-progress")
    assert rc == 130 and err == "mtd: interrupted\n"
    assert not (tmp_path / "d" / "report.json").exists()


@pytest.mark.parametrize("argv, message", [
    (["train", "{cfg}", "--out", "{file}/run"],
     r"--out '.*a_file/run': '.*a_file' is an existing file, so no folder can be made under it"),
    (["sample", "{run}", "--out", "{file}/deeper/s"], r"--out '.*a_file/deeper/s': '.*a_file' is an existing file"),
    (["demo", "--quick", "--out", "{file}/d"], r"--out '.*a_file/d': '.*a_file' is an existing file"),
    (["config", "show", "{latin1}"], r"latin1.toml: not UTF-8 text \(line 2, byte 15 is b'\\xe9'\); a TOML config must be UTF-8"),
    (["train", "{latin1}", "--out", "{tmp}/t"], r"latin1.toml: not UTF-8 text"),
    (["config", "show", "{tmp}"], r"^mtd config show: error: .*: is a folder; expected a TOML run config file"),
    (["train", "{tmp}", "--out", "{tmp}/t"], r"is a folder; expected a TOML run config file"),
    (["sample", "{run}", "--out", "{tmp}/s", "--seed", str(2**70)],
     r"--seed must be an integer in 0..18446744073709551615 \(2\*\*64 - 1\), got 1180591620717411303424"),
    (["sample", "{run}", "--out", "{tmp}/s", "--seed", "-1"], r"--seed must be an integer in 0..\d+ .*got -1$"),
    (["eval", "{run}", "--seed", str(2**64)], r"--seed must be an integer in 0..18446744073709551615"),
    (["eval", "{run}", "--seed", "-3"], r"--seed must be an integer .*got -3$"),
    (["demo", "--quick", "--out", "{tmp}/d", "--seed", str(2**32)],
     r"--seed must be an integer in 0..4294967295 \(2\*\*32 - 1\), got 4294967296 \(it also seeds the independent"),
    (["demo", "--quick", "--out", "{tmp}/d", "--threads", "-2"], r"--threads must be at least 0 \(0 = all cores\)"),
])
def test_bad_paths_and_seeds_are_one_line_errors(tiny_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                 argv: list[str], message: str) -> None:
    (tmp_path / "a_file").write_text("not a folder")
    (tmp_path / "latin1.toml").write_bytes("[trainer]\n# caf\xe9\n".encode("latin-1"))
    values = {"cfg": str(tiny_run / "tiny.toml"), "run": str(tiny_run / "run"), "tmp": str(tmp_path),
              "file": str(tmp_path / "a_file"), "latin1": str(tmp_path / "latin1.toml")}
    rc, out, err = _run(capsys, *[a.format(**values) for a in argv])
    assert rc == 1 and re.search(message, err.strip()), err
    assert len(err.strip().splitlines()) == 1 and "Error:" not in err and "Traceback" not in err
    assert not (tmp_path / "t").exists() and not (tmp_path / "d").exists()


@pytest.mark.parametrize("argv, message", [
    (["train", "{cfg}", "--out", "{file}"], r"--out '.*a_file' is an existing file; it must name a folder"),
    (["sample", "{run}", "--out", "{file}", "--n", "1"], r"--out '.*a_file' is an existing file"),
    (["sample", "{run}", "--out", "{tmp}/s", "--device", "cuda"],
     r"--device 'cuda': no CUDA device is available on this machine; use cpu"),
    (["eval", "{run}", "--device", "cuda:0"], r"--device 'cuda:0': no CUDA device is available"),
    (["sample", "{run}", "--out", "{tmp}/s", "--given", "label=99999999999999999999"],
     r"--given label: 99999999999999999999: class index out of range; modality 'label' has classes 0..9"),
    (["sample", "{run}", "--out", "{tmp}/s", "--given", "image={tmp}/missing.npy"],
     r"--given image: .*missing.npy: file not found"),
    (["eval", "{run}", "--n", "-5"], r"--n must be at least 0 \(0 = all\), got -5"),
    (["eval", "{run}", "--timesteps", "0"], r"--timesteps must be at least 1, got 0"),
    (["train", "{cfg}", "--out", "{tmp}/t", "--set", "taskset.diffusion.T=100000000000"],
     r"T must be an integer in \[?1(\.\.|, )\d+\]?, got 100000000000"),
    (["train", "{cfg}", "--out", "{tmp}/t", "--set", "backbone.channels=1000000"],
     r"about .* parameters .* above the 2e\+09 this build refuses to allocate"),
    (["train", "{cfg}", "--out", "{tmp}/t", "--set", "trainer.seed=\"abc\""],
     r"trainer.seed must be an integer .*got 'abc'"),
    pytest.param(["train", "{cfg}", "--out", "{tmp}/t", "--set", "trainer.device=\"cuda\""],
                 r"trainer.device 'cuda': no CUDA device is available on this machine; use cpu",
                 marks=pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")),
])
def test_cli_failures_are_one_line_errors(tiny_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                          argv: list[str], message: str) -> None:
    (tmp_path / "a_file").write_text("not a folder")
    values = {"cfg": str(tiny_run / "tiny.toml"), "run": str(tiny_run / "run"), "tmp": str(tmp_path),
              "file": str(tmp_path / "a_file")}
    rc, out, err = _run(capsys, *[a.format(**values) for a in argv])
    assert rc == 1 and re.search(message, err), err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_an_unexpected_failure_is_one_line_unless_mtd_debug(tiny_run: Path, tmp_path: Path,
                                                            capsys: pytest.CaptureFixture[str],
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError("a bug somewhere")

    monkeypatch.setattr("mtd_core.training.run.load_run", broken)
    rc, _, err = _run(capsys, "sample", str(tiny_run / "run"), "--out", str(tmp_path / "s"))
    assert rc == 1 and err.strip() == "mtd sample: error: RuntimeError: a bug somewhere (set MTD_DEBUG=1 for the " \
                                      "traceback)"
    monkeypatch.setenv("MTD_DEBUG", "1")
    with pytest.raises(RuntimeError, match="a bug somewhere"):
        main(["sample", str(tiny_run / "run"), "--out", str(tmp_path / "s")])


def test_a_broken_pipe_elsewhere_is_still_an_error(tiny_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*args: object, **kwargs: object) -> None:
        raise BrokenPipeError("a socket closed")

    monkeypatch.setattr("mtd_core.training.run.load_run", broken)
    rc, _, err = _run(capsys, "sample", str(tiny_run / "run"), "--out", str(tmp_path / "s"))
    assert rc == 1 and "mtd sample: error: BrokenPipeError: a socket closed" in err


def _mtd(*argv: str, **kwargs: object) -> subprocess.Popen[str]:
    """``python -m mtd_core.cli ARGV``: the path the ``mtd`` console script takes (mtd_core, then mtd_core.cli)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("MTD_DEBUG", None)
    return subprocess.Popen([sys.executable, "-m", "mtd_core.cli", *argv], text=True, env=env, cwd=ROOT,
                            **kwargs)  # type: ignore[call-overload]


@pytest.mark.parametrize("argv", [["config", "show", "{cfg}"], ["plugins", "list"]])
def test_a_closed_stdout_ends_quietly_with_status_141(tiny_run: Path, argv: list[str]) -> None:
    read, write = os.pipe()
    os.close(read)  # the reader is gone before the command writes: `mtd ... | head -0`
    try:
        proc = _mtd(*[a.format(cfg=tiny_run / "tiny.toml") for a in argv], stdout=write, stderr=subprocess.PIPE)
    finally:
        os.close(write)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 141 and err == ""


def _sigint_default() -> None:
    """In the child: Ctrl-C at its default, as in a terminal. A shell starts background jobs with SIGINT ignored and
    children inherit that, so without this the test would fail whenever pytest itself runs in the background."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _interrupt(proc: subprocess.Popen[str], delay: float) -> tuple[int, str]:
    time.sleep(delay)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    return proc.returncode, err


def test_a_ctrl_c_at_any_moment_of_the_command_is_one_line_and_status_130(tmp_path: Path) -> None:
    """SIGINT from the moment mtd_core.cli's run() starts (it says 'ready' there), while the sub-commands import and
    while the command waits (it reads a FIFO no one writes)."""
    fifo = tmp_path / "config.toml"
    os.mkfifo(fifo)
    code = ("import sys, mtd_core.cli as cli; build = cli.build_parser; "
            "cli.build_parser = lambda: (print('ready', file=sys.stderr, flush=True), build())[1]; cli.run()")
    for delay in (0.0, 0.3, 1.5):  # during the imports of the sub-commands, and later
        proc = subprocess.Popen([sys.executable, "-c", code, "config", "show", str(fifo)], text=True, cwd=ROOT,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, preexec_fn=_sigint_default,
                                env={**os.environ, "OMP_NUM_THREADS": "1"})
        assert proc.stderr is not None and proc.stderr.readline() == "ready\n"
        rc, err = _interrupt(proc, delay)
        assert (rc, err) == (130, "mtd: interrupted\n"), (delay, err[-2000:])


def test_the_console_script_reaches_its_ctrl_c_handling_before_torch() -> None:
    """``mtd`` imports mtd_core, then mtd_core.cli, and neither imports torch: torch and the sub-commands are
    imported inside run()'s Ctrl-C handling (the test above), so the only moment left unhandled is the
    interpreter's own start-up, before any of mtd's code runs."""
    code = "import sys, mtd_core, mtd_core.cli; print(sorted(m for m in ('torch', 'numpy') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "[]", out.stdout + out.stderr
