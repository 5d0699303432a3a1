"""The vision-language CLI end to end on tiny models: finetune --vision on shapesvqa (and resume), eval
with accuracy per question type, generate --image, bench --vision, and the errors on the way."""

import json

import pytest
from test_cli_train import write_config

from encore import load
from encore.cli import main
from encore.data import shapesvqa
from encore.model.vlm import VisionLanguageModel

STEPS = ["--max-steps", "2", "--batch-size", "4", "--micro-batch-size", "2"]
VQA = ["--task", "shapesvqa", "--task-option", "size=16", "--max-source-len", "24", "--max-target-len", "6"]


@pytest.mark.parametrize("arch", ["encdec", "deconly"])
def test_finetune_eval_generate_with_images(tmp_path, arch, capsys):
    config = write_config(tmp_path / f"{arch}.json", arch)
    out = tmp_path / "ft"
    vision = ["--vision", "vit-tiny", "--image-keep", "0.33", "--selection", "uniform"]
    assert main(["finetune", "--model", config, *VQA, *vision, *STEPS, "--save-every", "1", "--out", str(out)]) == 0
    model = load(out / "final")
    assert isinstance(model, VisionLanguageModel) and model.arch == arch and model.n_image_tokens == 22
    assert model.vision.selection == "uniform" and model.tokenizer is not None
    # a resumed run may not change the image settings without saying so
    argv = ["finetune", "--model", config, *VQA, "--vision", "vit-tiny", *STEPS, "--out", str(out), "--resume"]
    assert main([*argv[:-1], "--max-steps", "3", "--resume"]) == 2
    assert "image-keep" in capsys.readouterr().err

    pred = tmp_path / "pred.jsonl"
    argv = ["eval", "--model", str(out / "final"), "--task", "shapesvqa", "--limit", "10", "--max-new-tokens", "3"]
    assert main([*argv, "--out", str(pred)]) == 0
    metrics = json.loads(pred.with_suffix(".metrics.json").read_text())
    assert metrics["examples"] == 10 and "accuracy" in metrics
    assert {k for k in metrics if k.startswith("accuracy_")} <= {f"accuracy_{t}" for t in shapesvqa.ANSWERS}
    assert all("question_type" in json.loads(line) for line in pred.read_text().splitlines())

    image = tmp_path / "scene.png"
    shapesvqa.generate_example("test", 0).image(64).save(image)
    capsys.readouterr()
    argv = ["generate", "--model", str(out / "final"), "--input", "How many red shapes are there?"]
    assert main([*argv, "--image", str(image), "--max-new-tokens", "3"]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 1
    assert main(argv) == 2  # a vision model without an image
    assert "needs an image per input" in capsys.readouterr().err
    assert main([*argv, "--image", str(tmp_path / "missing.png")]) == 2
    assert "--image: no such image file" in capsys.readouterr().err
    assert main(["serve", "--model", str(out / "final")]) == 2
    assert "vision-language checkpoint" in capsys.readouterr().err


def test_image_task_errors_are_one_line(tmp_path, capsys):
    config = write_config(tmp_path / "c.json", "encdec")
    assert main(["finetune", "--model", config, *VQA, *STEPS, "--out", str(tmp_path / "a")]) == 2
    assert "needs images: pass --vision" in capsys.readouterr().err
    argv = ["finetune", "--model", config, *VQA, "--vision", "vit-huge", *STEPS, "--out", str(tmp_path / "b")]
    assert main(argv) == 2
    assert "--vision 'vit-huge'" in capsys.readouterr().err
    bad = tmp_path / "vqa.jsonl"
    bad.write_text('{"image": "nope.png", "question": "q", "answer": "a"}\n')
    argv = [
        "finetune",
        "--model",
        config,
        "--task",
        str(bad),
        "--vision",
        "vit-tiny",
        *STEPS,
        "--out",
        str(tmp_path / "c"),
    ]
    assert main(argv) == 2
    assert "vqa.jsonl: line 1: field 'image': no such image file" in capsys.readouterr().err


def test_bench_vision_reports_both_models_per_keep(tmp_path, capsys):
    out = tmp_path / "bv.json"
    argv = ["bench", "--vision", "vit-tiny", "--model", "encdec-tiny", "--baseline", "deconly-tiny"]
    assert main([*argv, "--image-keep", "1.0", "0.1", "--output-len", "3", "--repeats", "1", "--json", str(out)]) == 0
    rows = json.loads(out.read_text())["rows"]
    assert [(r["arch"], r["image_tokens"]) for r in rows] == [
        ("encdec", 65),
        ("deconly", 65),
        ("encdec", 7),
        ("deconly", 7),
    ]
    kv = {(r["arch"], r["image_tokens"]): r["kv_bytes"] for r in rows}
    assert kv[("encdec", 65)] < kv[("deconly", 65)] and kv[("encdec", 7)] < kv[("encdec", 65)]
    assert "first token ms" in capsys.readouterr().out
