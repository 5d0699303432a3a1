"""`encore reproduce`: the smoke scale end to end (every claim, results.json + REPORT.md), resumption,
the run folder's settings, the statistics behind a verdict and the KD gate."""

import json

import pytest

from encore.cli import main
from encore.reproduce import CLAIMS, quality
from encore.reproduce.context import VERDICTS, Context, compare, summary
from encore.reproduce.runner import Experiment, Runner
from encore.reproduce.scales import SCALES, split_layers


@pytest.mark.slow
def test_smoke_runs_every_claim_and_resumes(tmp_path, capsys):
    out = tmp_path / "r"
    assert main(["reproduce", "--scale", "smoke", "--out", str(out)]) == 0
    doc = json.loads((out / "results.json").read_text())
    assert list(doc["claims"]) == list(CLAIMS)
    for name, claim in doc["claims"].items():
        assert claim["verdict"] in VERDICTS and {"paper", "measured", "metric", "runs"} <= set(claim), name
        assert claim["commands"], name
    kd = doc["claims"]["kd"]
    assert {"teacher_score", "student_score", "student_kd_score"} <= set(kd)
    if kd["teacher_score"] - kd["student_score"] < quality.KD_GAP:
        assert kd["verdict"] == "inconclusive" and kd["student_kd_score"] is None
    arch = doc["claims"]["architecture"]
    assert {r["task"] for r in arch["runs"]} == {"addition", "code2doc"}
    assert all(len(r["scores"]) == 2 for r in arch["runs"])  # two seeds per arm
    report = (out / "REPORT.md").read_text()
    assert all(f"## {name}" in report for name in CLAIMS) and "encore pretrain --model" in report
    assert "encore bench --model encdec-tiny" in report and (out / "plots" / "architecture.png").is_file()
    capsys.readouterr()

    # the same command again: every experiment is remembered, nothing runs
    assert main(["reproduce", "--scale", "smoke", "--out", str(out), "--only", "architecture"]) == 0
    printed = capsys.readouterr().out
    assert "[run ]" not in printed and "[done]" in printed
    assert main(["reproduce", "--scale", "smoke", "--out", str(out), "--seeds", "3"]) == 2
    assert "other settings (seeds: 2 there, 3 now)" in capsys.readouterr().err


def test_bad_flags_are_one_line(tmp_path, capsys):
    assert main(["reproduce", "--scale", "smoke", "--out", str(tmp_path), "--seeds", "1"]) == 2
    assert "at least 2 seeds" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # argparse's own error
        main(["reproduce", "--scale", "huge", "--out", str(tmp_path)])
    assert "invalid choice: 'huge'" in capsys.readouterr().err


def test_runner_remembers_and_continues(tmp_path):
    calls = []
    runner = Runner(tmp_path, log=lambda _: None)
    exp = Experiment("x", fn=lambda folder: calls.append(folder) or {"value": 3}, label="count")
    assert runner.run(exp)["result"] == {"value": 3} and runner.run(exp)["result"] == {"value": 3}
    assert len(calls) == 1  # done once, remembered
    # a killed training command left files but no checkpoint: it starts over with --overwrite
    seen = []
    import encore.reproduce.runner as runner_module

    original = runner_module._encore
    runner_module._encore = lambda argv, log: seen.append(argv) or 0
    try:
        (tmp_path / "runs" / "t").mkdir()
        runner.run(Experiment("t", ["finetune", "--out", str(tmp_path / "runs" / "t")], trains=True))
        (tmp_path / "runs" / "u" / "checkpoints").mkdir(parents=True)
        runner.run(Experiment("u", ["finetune"], trains=True))
    finally:
        runner_module._encore = original
    assert seen[0][-1] == "--overwrite" and seen[1][-1] == "--resume=auto"


def test_statistics_and_splits():
    assert compare([3, 4], [1, 2]) == "better" and compare([1, 2], [3, 4]) == "worse"
    assert compare([1, 3], [2, 4]) == "tie"  # overlapping seed ranges
    assert summary([1.0, 3.0]) == {"mean": 2.0, "min": 1.0, "max": 3.0, "values": [1.0, 3.0]}
    assert [split_layers(6, s) for s in (2 / 3, 1 / 2, 1 / 3)] == [(4, 2), (3, 3), (2, 4)]
    assert split_layers(3, 2 / 3) == (2, 1) and split_layers(2, 1 / 3) == (1, 1)


class FakeContext(Context):
    """Scores from a table (by a piece of the run's name) instead of training: exercises kd's gate and arms.
    The student without KD is the architecture claim's fine-tune ("finetune-...")."""

    def __init__(self, tmp_path, scores):
        super().__init__(tmp_path, SCALES["smoke"], [0, 1], "cpu", Runner(tmp_path, log=lambda _: None))
        self.scores, self.calls = scores, []

    def pretrain(self, config, seed):
        return f"pretrained-s{seed}"

    def finetune(self, name, model, task, seed, steps, extra=(), teacher=None):
        self.calls.append(name)
        return name

    def evaluate(self, name, model, task, extra=()):
        key = next(k for k in self.scores if k in model)
        return {"exact_match": self.scores[key] + model.endswith("s1")}


def test_kd_gate_and_arms(tmp_path):
    weak = FakeContext(tmp_path, {"teacher": 15.0, "kd-student-ce": 10.0})
    claim = quality.kd(weak)
    assert claim["verdict"] == "inconclusive" and claim["student_kd_score"] is None
    assert claim["measured"]["teacher_gap"] == pytest.approx(4.5) and not any("seqkd" in c for c in weak.calls)

    scores = {"teacher": 60.0, "kd-student-ce": 10.0, "seqkd-fkl": 20.0, "seqkd": 12.0, "fkl": 9.0}
    strong = FakeContext(tmp_path, scores)
    claim = quality.kd(strong)
    assert claim["verdict"] == "holds" and claim["measured"] == {"gain at N=8": 10.0}
    assert claim["teacher_score"] == 60.0 and claim["student_score"] == 10.5 and claim["student_kd_score"] == 20.5
    assert "kd-student-seqkd-fkl-n8-s1" in strong.calls and "kd-student-ce-n8-s0" in strong.calls
    arms = ["no KD", "forward KL, gold only", "sequence-level KD", "sequence-level + forward KL"]
    assert [r["arm"] for r in claim["table"]] == [f"8 gold: {arm}" for arm in arms]
