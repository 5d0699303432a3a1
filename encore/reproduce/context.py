"""What every claim of `encore reproduce` shares: the run folder, the scale, model configs, the common
experiments (pretrain -> fine-tune -> eval), and the statistics behind a verdict.

Seeds and ties: every quality comparison runs each side at each seed; a side is summarised by its
mean and range (min..max), and two sides whose ranges overlap are a **tie**.
"""

from __future__ import annotations

import json
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from encore.config import ModelConfig
from encore.reproduce.runner import Experiment, Runner
from encore.reproduce.scales import Scale, split_layers

METRIC = {"addition": "exact_match", "code2doc": "rougeL", "shapesvqa": "accuracy"}
TASK_LENGTHS = {"addition": ("32", "8"), "code2doc": ("128", "32")}  # --max-source-len, --max-target-len
VERDICTS = ("holds", "partly", "does not hold", "inconclusive")


@dataclass
class Context:
    root: Path
    scale: Scale
    seeds: list[int]
    device: str
    runner: Runner

    # --- models ----------------------------------------------------------------------------------

    def config(self, arch: str, encoder_share: float = 2 / 3, teacher: bool = False) -> str:
        """A ModelConfig .json for this scale (written once under configs/); returns its path."""
        shape = self.scale.teacher_shape if teacher else self.scale.shape
        layers = self.scale.teacher_layers if teacher else self.scale.layers
        if arch == "encdec":
            enc, dec = split_layers(layers, encoder_share)
            name = f"encdec-{enc}-{dec}" + ("-teacher" if teacher else "")
        else:
            enc, dec = 0, layers
            name = f"deconly-{dec}" + ("-teacher" if teacher else "")
        path = self.root / "configs" / f"{name}.json"
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            ModelConfig(arch=arch, n_encoder_layers=enc, n_decoder_layers=dec, **shape).save(path)
        return str(path)

    @staticmethod
    def label(config_path: str) -> str:
        return Path(config_path).stem

    def params(self, config_path: str, vocab_size: int = 8192) -> int:
        return ModelConfig.load(config_path).replace(vocab_size=vocab_size).param_counts()["total"]

    # --- the common experiments ------------------------------------------------------------------

    def _steps(self, steps: int, seed: int, batch_size: int | None = None) -> list[str]:
        b = str(batch_size or self.scale.batch_size)
        every = str(max(1, steps // 3))
        return [
            "--max-steps",
            str(steps),
            "--batch-size",
            b,
            "--micro-batch-size",
            b,
            "--seed",
            str(seed),
            "--save-every",
            every,
            "--keep-last",
            "1",
        ]

    def pretrain(self, config: str, seed: int) -> str:
        """Pretrain `config` on the embedded stdlib corpus; returns the final checkpoint."""
        name = f"pretrain-{self.label(config)}-s{seed}"
        out = self.runner.out(name)
        argv = [
            "pretrain",
            "--model",
            config,
            "--data",
            "stdlib",
            "--seq-len",
            str(self.scale.pretrain_seq_len),
            *self._steps(self.scale.pretrain_steps, seed, self.scale.pretrain_batch_size),
            "--out",
            str(out),
        ]
        self.runner.run(Experiment(name, argv, trains=True))
        return str(out / "final")

    def finetune(
        self, name: str, model: str, task: str, seed: int, steps: int, extra: list[str] = (), teacher: str | None = None
    ) -> str:
        """Fine-tune `model` on `task` (with `teacher`: `encore distill` into it); returns the final checkpoint."""
        out = self.runner.out(name)
        src, tgt = TASK_LENGTHS.get(task, ("32", "8"))
        limit = self.scale.finetune_limit
        limited = ["--limit", str(limit)] if limit and "--limit" not in extra else []
        head = (
            ["finetune", "--model", model] if teacher is None else ["distill", "--teacher", teacher, "--student", model]
        )
        argv = [
            *head,
            "--task",
            task,
            *self.scale.task_options.get(task, []),
            "--max-source-len",
            src,
            "--max-target-len",
            tgt,
            *self._steps(steps, seed),
            *extra,
            *limited,
            "--out",
            str(out),
        ]
        self.runner.run(Experiment(name, argv, trains=True))
        return str(out / "final")

    def evaluate(self, name: str, model: str, task: str, extra: list[str] = ()) -> dict[str, Any]:
        """Score `model` on the task's validation split; returns the metrics."""
        out = self.runner.out(name) / "predictions.jsonl"
        src, tgt = TASK_LENGTHS.get(task, ("32", "8"))
        argv = [
            "eval",
            "--model",
            model,
            "--task",
            task,
            *self.scale.task_options.get(task, []),
            "--split",
            "validation",
            "--limit",
            str(self.scale.eval_limit),
            "--max-source-len",
            src,
            "--max-new-tokens",
            tgt,
            "--batch-size",
            "32",
            "--device",
            self.device,
            *extra,
            "--out",
            str(out),
        ]
        self.runner.out(name).mkdir(parents=True, exist_ok=True)
        self.runner.run(Experiment(name, argv))
        return json.loads(out.with_suffix(".metrics.json").read_text())

    def task_score(self, config: str, task: str, seed: int, pretrained: str) -> float:
        """Fine-tune a pretrained model on `task` and score it: the architecture and split claims' unit."""
        tag = f"{self.label(config)}-{task}-s{seed}"
        final = self.finetune(f"finetune-{tag}", pretrained, task, seed, self.scale.finetune_steps)
        return self.evaluate(f"eval-{tag}", final, task)[METRIC[task]]


# --- statistics -------------------------------------------------------------------------------------


def summary(values: list[float]) -> dict[str, Any]:
    return {"mean": statistics.fmean(values), "min": min(values), "max": max(values), "values": values}


def compare(a: list[float], b: list[float]) -> str:
    """'better' / 'worse' when `a`'s seed range lies wholly above / below `b`'s, else 'tie'."""
    if min(a) > max(b):
        return "better"
    if max(a) < min(b):
        return "worse"
    return "tie"


def fmt(s: dict[str, Any]) -> str:
    return f"{s['mean']:.1f} ({s['min']:.1f}-{s['max']:.1f})"
