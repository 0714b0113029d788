"""bench_models: the schedule of an A/B timing run (no timed assertions)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from visionzoo.bench import bench_models

from family_models import smallest_per_family


class Recorder(nn.Module):
    """Appends its tag to a shared log on every forward."""

    def __init__(self, tag: str, log: list[str]) -> None:
        super().__init__()
        self.tag, self.log = tag, log
        self.fc = nn.Linear(3, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.log.append(self.tag)
        return self.fc(x.mean((2, 3)))


def test_rounds_alternate_order_and_share_step_count():
    log: list[str] = []
    res = bench_models({"a": lambda: Recorder("a", log), "b": lambda: Recorder("b", log)}, name="rec", batch_size=2,
                       img_size=8, warmup=1, rounds=4, iters=3, min_round_s=0.0, gmacs=1.0)
    assert log[:2] == ["a", "b"]  # one warm-up step each
    timed = "".join(log[2:])
    assert timed == "aaabbb" + "bbbaaa" + "aaabbb" + "bbbaaa"  # odd rounds reversed: neither always runs first
    assert [r.impl for r in res] == ["a", "b"]
    for r in res:  # 1 GMAC per image: GFLOP/s = 2 * images/s
        assert r.images_per_s > 0 and abs(r.gflops_per_s - 2 * r.images_per_s) < 1e-6 * r.gflops_per_s


def test_fast_models_get_more_steps_per_round():
    log: list[str] = []
    bench_models({"a": lambda: Recorder("a", log)}, name="rec", batch_size=1, img_size=8, warmup=2, rounds=1, iters=1,
                 min_round_s=0.05)
    assert len(log) - 2 > 1  # a forward of a 3->2 linear takes far less than 50 ms


def _run_benchmarks_module():
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "run_benchmarks.py"
    spec = importlib.util.spec_from_file_location("run_benchmarks", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_update_rows_replaces_only_the_named_rows(tmp_path):

    rb = _run_benchmarks_module()
    table = "## dev — inference\n\nrun line A\n\n| model | x |\n|---|---|\n| m1 | 1 |\n| m2 | 2 |\n"
    text = "# Benchmarks\n\n" + table + "\n## Notes\n\nkept\n"
    (tmp_path / "B.md").write_text(text)
    section = rb._find_section(tmp_path / "B.md", "## dev — inference")
    assert section == table
    new = rb._update_rows(section, ["| m2 | 9 |"], "run line B")
    assert new.splitlines()[-2:] == ["| m1 | 1 |", "| m2 | 9 |"]
    assert "Rows re-run later (m2): run line B" in new and "run line A" in new and new.endswith("\n")
    # each re-run line names the rows it wrote that still stand; the same run line is one line
    again = rb._update_rows(rb._update_rows(new, ["| m1 | 5 |"], "run line B"), ["| m2 | 7 |"], "run line C")
    assert again.splitlines()[2:] == ["run line A", "", "Rows re-run later (m1): run line B", "",
                                      "Rows re-run later (m2): run line C", "", "| model | x |", "|---|---|", "| m1 | 5 |", "| m2 | 7 |"]
    assert rb._update_rows(again, [], "") == again
    with pytest.raises(SystemExit, match="no rows for m3"):
        rb._update_rows(section, ["| m3 | 1 |"], "")
    with pytest.raises(SystemExit, match="no table"):
        rb._find_section(tmp_path / "B.md", "## other")


@pytest.mark.parametrize("args, message", [
    (["--models", "regnetx_002", "regnetx_02"], "not a model that both visionzoo and timm have: regnetx_02"),
    (["--models", "convmixer_256_8"], "convmixer_256_8"),  # visionzoo's alone: no ratio to write
    (["--batch-size", "0"], "at least 1"),
    (["--device", "tpu"], "cpu or cuda"),
    (["--train", "--mode", "both"], "give one of --train and --mode both"),
])
def test_run_benchmarks_refuses_bad_arguments_before_writing(tmp_path, monkeypatch, args, message):
    """A misspelt model was dropped and the emptied table replaced the existing one."""
    import sys

    pytest.importorskip("timm")
    rb = _run_benchmarks_module()
    out = tmp_path / "B.md"
    out.write_text("# Benchmarks\n\nkept\n")
    monkeypatch.setattr(sys, "argv", ["run_benchmarks.py", *args, "--output", str(out)])
    with pytest.raises(SystemExit, match=message):
        rb.main()
    assert out.read_text() == "# Benchmarks\n\nkept\n"


def test_run_benchmarks_keeps_the_rows_of_models_that_ran_when_one_fails(tmp_path, monkeypatch, capsys):
    """One failing model lost the whole table (an H200 run would have lost 20 rows to one)."""
    import sys

    pytest.importorskip("timm")
    rb = _run_benchmarks_module()
    row = {"size": 224, "gmacs": 1.0, "ours": 10.0, "timm": 9.0, "gflops": 20.0, "ratio": 1.11, "q1": 1.1, "q3": 1.12,
           "peak": 100.0, "peak_frac": 0.2}

    def fake(name, args):
        if name == "regnetx_004":
            raise RuntimeError(f"benchmark of {name} failed:\nTraceback ...\nRuntimeError: out of memory")
        return {mode: row for mode in rb._modes(args)}

    monkeypatch.setattr(rb, "bench_in_subprocess", fake)
    out = tmp_path / "B.md"
    monkeypatch.setattr(sys, "argv", ["run_benchmarks.py", "--device", "cpu", "--models", "regnetx_002", "regnetx_004", "--output", str(out)])
    with pytest.raises(SystemExit, match="1 of 2 models failed: regnetx_004"):
        rb.main()
    text = out.read_text()
    assert "| regnetx_002 | 224 | 1.00 | 10.0 | 9.0 | 1.11 | 1.10-1.12 | 20 | 100 | 20% |" in text
    assert "| regnetx_004 |" not in text and "Failed: regnetx_004: RuntimeError: out of memory" in text
    assert "regnetx_004: FAILED" in capsys.readouterr().out
    monkeypatch.setattr(rb, "bench_in_subprocess", lambda name, args: fake("regnetx_004", args))
    monkeypatch.setattr(sys, "argv", ["run_benchmarks.py", "--device", "cpu", "--models", "regnetx_004", "--output", str(out)])
    with pytest.raises(SystemExit, match="every model failed"):
        rb.main()
    assert out.read_text() == text


def test_run_benchmarks_both_modes_written_after_every_model(tmp_path, monkeypatch):
    """--mode both writes the inference and the training table from one process per model; the
    file is rewritten after each model, so a stopped run keeps its rows and says it is partial."""
    import sys

    pytest.importorskip("timm")
    rb = _run_benchmarks_module()
    seen = []

    def fake(name, args):
        seen.append((name, args.mode))
        if name == "regnetx_006":
            raise KeyboardInterrupt  # the run is stopped while this model is timed
        speed = {"regnetx_002": 10.0, "regnetx_004": 20.0}[name]
        return {mode: {"size": 224, "gmacs": 1.0, "ours": speed * (1 if mode == "inference" else 0.3), "timm": 9.0, "gflops": 2.0,
                       "ratio": 1.0, "q1": 1.0, "q3": 1.0, "peak": 100.0, "peak_frac": 0.02} for mode in rb._modes(args)}

    monkeypatch.setattr(rb, "bench_in_subprocess", fake)
    monkeypatch.setattr(rb, "device_description", lambda device: "dev")
    out = tmp_path / "B.md"
    out.write_text("# Benchmarks\n\n## Notes\n\nkept\n")
    argv = ["run_benchmarks.py", "--device", "cpu", "--mode", "both", "--output", str(out), "--models"]
    monkeypatch.setattr(sys, "argv", argv + ["regnetx_002", "regnetx_004", "regnetx_006"])
    with pytest.raises(KeyboardInterrupt):
        rb.main()
    assert seen == [("regnetx_002", "both"), ("regnetx_004", "both"), ("regnetx_006", "both")]  # one process per model
    text = out.read_text()
    inference, train = rb._find_section(out, "## dev — inference, fp32, batch 4"), rb._find_section(out, "## dev — train, fp32, batch 4")
    assert "| regnetx_004 | 224 | 1.00 | 20.0 |" in inference and "| regnetx_004 | 224 | 1.00 | 6.0 |" in train
    assert "| regnetx_006 |" not in text and "kept" in text
    assert "Partial: 2 rows so far, 1 models still to run" in inference and "Partial: 2 rows so far" in train
    monkeypatch.setattr(sys, "argv", argv + ["regnetx_002", "regnetx_004"])
    rb.main()
    assert "Partial" not in out.read_text() and "| regnetx_002 | 224 | 1.00 | 3.0 |" in out.read_text()
    monkeypatch.setattr(sys, "argv", argv + ["regnetx_004", "--update-rows"])  # re-run one row of both tables
    rb.main()
    text = out.read_text()
    assert text.count("Rows re-run later (regnetx_004)") == 2 and text.count("| regnetx_002 |") == 2


def test_profile_pair_lists_both_implementations_operators(monkeypatch, capsys):
    import importlib.util
    import sys
    from pathlib import Path

    pytest.importorskip("timm")
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "profile_pair.py"
    spec = importlib.util.spec_from_file_location("profile_pair", path)
    pp = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(pp)
    monkeypatch.setattr(sys, "argv", ["profile_pair.py", "regnetx_002", "--device", "cpu", "--batch-size", "1", "--steps", "1", "--top", "6", "--train"])
    pp.main()
    out = capsys.readouterr().out
    heads = [line for line in out.splitlines() if line.startswith("-- ")]
    assert [h.split(":")[0] for h in heads] == ["-- visionzoo", "-- timm"] and "train, batch 1" in out
    assert out.count("aten::convolution_backward") == 2  # a training step's largest CPU operator, on both sides
    monkeypatch.setattr(sys, "argv", ["profile_pair.py", "regnetx_02"])
    with pytest.raises(SystemExit, match="regnetx_02"):
        pp.main()


def test_bench_cli_expands_wildcards_and_states_its_settings(capsys):
    from visionzoo.cli import main

    assert main(["bench", "regnetx_00[24]", "--img-size", "32", "--batch-size", "1", "--rounds", "1", "--iters", "1", "--warmup", "0"]) == 0
    out = capsys.readouterr().out
    rows = [line.split() for line in out.splitlines() if line.startswith("regnetx_00") and " infer " in line]
    assert [(r[0], r[3]) for r in rows] == [("regnetx_002", "32"), ("regnetx_004", "32")]  # name, input side
    assert "batch 1, fp32" in out and "GMACs: per image" in out and "--warmup 0 times the first steps" in out


def test_bench_train_of_one_image_on_a_1x1_map_says_what_to_change(capsys):
    """torch's "Expected more than 1 value per channel when training" came through as it is;
    now the advice ``visionzoo train`` gives for it."""
    from visionzoo.cli import main

    assert main(["bench", "resnet10t", "--train", "--batch-size", "1", "--img-size", "32", "--rounds", "1", "--iters", "1", "--warmup", "0"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "resnet10t: a BatchNorm layer got one value per channel in training (batch 1 at 32x32" in err[0]
    assert "give a --batch-size of 2 or more, or a larger --img-size" in err[0]


def test_bench_compare_leaves_out_a_timm_model_that_refuses_the_size(capsys):
    timm = pytest.importorskip("timm")
    from visionzoo.cli import main

    # timm's CoAtNet takes img_size=48 but its forward fails there (a relative-position table
    # of another shape); ours runs it. The run goes on without the comparison, saying why.
    with pytest.raises(RuntimeError):
        timm.create_model("coatnet_0_224", img_size=48).eval()(torch.randn(1, 3, 48, 48))
    args = ["--img-size", "48", "--batch-size", "1", "--rounds", "1", "--iters", "1", "--warmup", "0", "--compare", "timm"]
    assert main(["bench", "coatnet_0_224", *args]) == 0
    out = capsys.readouterr().out
    assert "coatnet_0_224: timm's model does not run at 48x48 (RuntimeError: " in out and "timing visionzoo alone" in out
    rows = [line.split()[:2] for line in out.splitlines() if " infer " in line]
    assert rows == [["coatnet_0_224", "visionzoo"]]


def test_bench_compare_builds_timms_model_once(capsys, monkeypatch):
    """timm's model was built once to check that it runs at the size, thrown away, and built
    again to be timed: the one that ran is timed."""
    timm = pytest.importorskip("timm")
    from visionzoo.cli import main

    built, create = [], timm.create_model

    def counted(name, **kwargs):  # models made (a CNN's img_size=... is refused before any is)
        model = create(name, **kwargs)
        built.append(name)
        return model

    monkeypatch.setattr(timm, "create_model", counted)
    args = ["--img-size", "32", "--batch-size", "1", "--rounds", "1", "--iters", "1", "--warmup", "0", "--compare", "timm"]
    assert main(["bench", "regnetx_002", *args]) == 0
    out = capsys.readouterr().out
    assert built == ["regnetx_002"]
    assert [line.split()[:2] for line in out.splitlines() if " infer " in line] == [["regnetx_002", "visionzoo"], ["regnetx_002", "timm"]]
    assert "speed-up of visionzoo over timm" in out


def test_bench_table_columns_fit_the_longest_name(capsys):
    from visionzoo.cli import main

    long = "swin_mlp_tiny_c6_patch4_window8_256"  # 35 characters
    args = ["--img-size", "32", "--batch-size", "1", "--rounds", "1", "--iters", "1", "--warmup", "0"]
    assert main(["bench", long, *args]) == 0
    lines = capsys.readouterr().out.splitlines()
    header = next(line for line in lines if line.startswith("model "))
    row = next(line for line in lines if " infer " in line)
    assert row.split()[0] == long
    assert row.index(" visionzoo ") == header.index(" impl ") and len(row) == len(header)  # columns under their headings
    assert any("; 1 round of at least 1 step after 0 warm-up steps" in line for line in lines), lines  # (it said "1 rounds")


def _result(impl: str, round_ms: list[float]):
    from visionzoo.bench import BenchResult

    return BenchResult(impl, "m", "infer", 1, 8, 1.0, 1.0, None, 1.0, 2.0, round_ms)


def test_paired_ratio_compares_within_rounds():
    from visionzoo.bench import paired_ratio

    # the machine slows down 3x from round to round; within a round b takes 1.1-1.3x a's time
    a = _result("a", [10.0, 30.0, 90.0, 270.0, 810.0])
    b = _result("b", [12.0, 33.0, 117.0, 297.0, 972.0])  # ratios 1.2, 1.1, 1.3, 1.1, 1.2
    median, q1, q3 = paired_ratio(a, b)
    assert (round(median, 6), round(q1, 6), round(q3, 6)) == (1.2, 1.1, 1.2)
    assert abs(paired_ratio(b, a)[0] - 1 / 1.2) < 1e-9  # from b's side: a's time over b's
    assert paired_ratio(_result("a", [4.0]), _result("b", [5.0])) == (1.25, 1.25, 1.25)

    with pytest.raises(ValueError, match="not timed in the same rounds"):
        paired_ratio(a, _result("b", [1.0]))


def test_bench_models_records_every_round():
    res = bench_models({"a": lambda: Recorder("a", []), "b": lambda: Recorder("b", [])}, name="rec", batch_size=1,
                       img_size=8, warmup=1, rounds=3, iters=1, min_round_s=0.0)
    assert [len(r.round_ms) for r in res] == [3, 3]
    for r in res:  # images/s and latency come from the median round
        assert abs(r.latency_ms - sorted(r.round_ms)[1]) < 1e-9


def test_peak_fraction_sets_each_round_against_its_own_probe():
    from visionzoo.bench import BenchResult, peak_fraction

    # batch 2, 0.5 GMACs: 2 GFLOP a step. The machine halves its speed from round to round,
    # the model's step time and the GEMM probe alike: the fraction of the peak does not move.
    r = BenchResult("a", "m", "infer", 2, 8, 1.0, 1.0, None, 0.5, 1.0, [10.0, 20.0, 40.0], [400.0, 200.0, 100.0])
    assert [round(v, 9) for v in peak_fraction(r)] == [0.5, 0.5, 0.5]  # 200 GFLOP/s of 400, 100 of 200, ...
    train = BenchResult("a", "m", "train", 2, 8, 1.0, 1.0, None, 0.5, 1.0, [60.0], [400.0])
    assert round(peak_fraction(train)[0], 9) == 0.25  # 3x the forward's FLOPs: 6 GFLOP in 60 ms, 100 of 400

    with pytest.raises(ValueError, match="no GEMM peak was probed"):
        peak_fraction(BenchResult("a", "m", "infer", 2, 8, 1.0, 1.0, None, 0.5, 1.0, [10.0]))


def test_bench_models_probes_the_peak_in_every_round():

    res = bench_models({"a": lambda: Recorder("a", []), "b": lambda: Recorder("b", [])}, name="rec", batch_size=1,
                       img_size=8, warmup=1, rounds=2, iters=1, min_round_s=0.0, probe_peak=True)
    for r in res:  # one probe per round, shared by the implementations, each a real GEMM rate
        assert r.round_peak_gflops is res[0].round_peak_gflops and len(r.round_peak_gflops) == 2
        assert all(p > 1.0 for p in r.round_peak_gflops)
    with pytest.raises(ValueError, match="GEMM peak of the CPU"):
        bench_models({"a": lambda: Recorder("a", [])}, name="rec", device="cuda", probe_peak=True)


@pytest.mark.parametrize("kw", [dict(rounds=0), dict(iters=0), dict(warmup=-1), dict(batch_size=0)])
def test_bench_models_refuses_empty_timings(kw):
    built = []
    with pytest.raises(ValueError, match="rounds >= 1"):
        bench_models({"a": lambda: built.append(1) or Recorder("a", [])}, name="rec", **{"batch_size": 1, "img_size": 8, **kw})
    assert not built  # refused before any model is built


@pytest.mark.parametrize("family", sorted(smallest_per_family()))
def test_off_the_cpu_the_operators_do_not_depend_on_the_batch(family):
    """CPU fast paths that split the work for the CPU's caches (token blocks, batch chunks) must
    stay on the CPU: on a GPU they turn into many small launches (an MLP blocked over 1024
    tokens made Swin-T inference 8x slower than timm on an H200). Meta tensors stand in for a
    GPU's: after one call that fills the caches, the inference and the training forward of the
    family's smallest model dispatch the same number of operators at batch 2 and batch 64."""
    from torch.utils._python_dispatch import TorchDispatchMode

    import visionzoo

    class Count(TorchDispatchMode):
        calls = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.calls += 1
            return func(*args, **(kwargs or {}))

    name = smallest_per_family()[family]
    model = visionzoo.create_model(name).to("meta")
    side = visionzoo.registry.get_entry(name).default_cfg["input_size"][-1]

    def calls(batch: int, train: bool) -> int:
        x = torch.empty(batch, 3, side, side, device="meta")
        with (torch.enable_grad() if train else torch.inference_mode()), Count() as count:
            model.train(train)(x)
        return count.calls

    for train in (False, True):
        calls(2, train)
        assert calls(2, train) == calls(64, train), f"{name} ({'train' if train else 'inference'})"
