"""`casa-adapter eval` on a tiny demo set: the JSONL, the metrics JSON, image / multi-image / video
samples, equality with a hand-run `generate`, bad samples, the recipe path and the errors.

Nothing is trained: the adapter is a tiny random Llama wrapped with a random `siglip-tiny` tower,
its new parameters given random values (so that answers depend on the images), saved and evaluated.
"""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import pytest
from PIL import Image

import casa_adapter
from casa_adapter.backbone.base_models import load_base
from casa_adapter.data.make_demo import DemoSettings, make_demo
from casa_adapter.eval import main
from casa_adapter.eval.loading import read_recipe
from casa_adapter.metrics import ExactMatch

from conftest import randomize_new_params, tiny_tower
from recipe_runs import tiny_recipe, write_recipe

pytestmark = pytest.mark.filterwarnings("ignore:VQAAccuracy")  # single-answer data: the metric warns, rightly

QTYPES = ("color", "count", "compare", "video_color")
N_VAL = 24
KEYS = ["id", "question", "answers", "prediction", "qtype", "source"]
TOKENS = 6
ROOT = Path(__file__).resolve().parents[2]


def read_tar(path: Path) -> dict[str, dict[str, bytes]]:
    """{key: {ext: bytes}} of a WebDataset tar, in order."""
    samples: dict[str, dict[str, bytes]] = {}
    with tarfile.open(path) as tf:
        for info in tf:
            key, ext = info.name.split(".", 1)
            samples.setdefault(key, {})[ext] = tf.extractfile(info).read()
    return samples


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("eval") / "demo"
    make_demo(DemoSettings(out=str(out), train=8, val=N_VAL, image_size=32, qtypes=QTYPES), show_progress=False)
    return out


@pytest.fixture(scope="module")
def adapter(demo):
    """(adapter dir, the wrapped model, its tokenizer)."""
    llm, tokenizer = load_base("tiny")
    model = casa_adapter.wrap(
        llm, vision=casa_adapter.VisionSettings("siglip-tiny", pretrained=False, image_size=32), every=2
    )
    randomize_new_params(model, scale=0.5)
    model.save_adapter(str(demo.parent / "adapter"))
    return demo.parent / "adapter", model.eval(), tokenizer


@pytest.fixture(scope="module")
def evaluated(demo, adapter):
    """One run of the command on the val shards: (predictions, metrics JSON)."""
    out, metrics = demo.parent / "run" / "preds.jsonl", demo.parent / "run" / "metrics.json"
    assert (
        main(
            [
                "--adapter",
                str(adapter[0]),
                "--base",
                "tiny",
                "--shards",
                str(demo / "val"),
                "--out",
                str(out),
                "--json",
                str(metrics),
                "--max-new-tokens",
                str(TOKENS),
                "--quiet",
            ]
        )
        == 0
    )
    return read_jsonl(out), json.loads(metrics.read_text())


def test_jsonl_has_one_line_per_sample_in_shard_order(demo, evaluated):
    lines, _ = evaluated
    shard = read_tar(demo / "val" / "shard-000000.tar")
    assert [line["id"] for line in lines] == list(shard)
    for line, members in zip(lines, shard.values()):
        record = json.loads(members["json"])
        assert list(line) == KEYS
        assert line["answers"] == record["answers"] and line["qtype"] == record["qtype"]
        assert line["source"] == str(demo / "val") and isinstance(line["prediction"], str)
    assert len({line["prediction"] for line in lines if line["qtype"] == "color"}) > 1  # the images matter


def test_metrics_overall_and_per_qtype_add_up(evaluated):
    _, metrics = evaluated
    assert metrics["overall"]["count"] == N_VAL == metrics["samples"]["good"]
    assert metrics["samples"]["bad"] == 0
    assert {q: row["count"] for q, row in metrics["qtypes"].items()} == {q: N_VAL // len(QTYPES) for q in QTYPES}
    for row in [metrics["overall"], *metrics["qtypes"].values()]:
        assert list(row) == ["count", "exact_match", "vqa_accuracy", "anls", "relaxed_accuracy"]


def exact_match(lines: list[dict]) -> float:
    """Exact match computed from the JSONL alone."""
    metric = ExactMatch()
    return sum(float(metric.score(line["prediction"], line["answers"])) for line in lines) / len(lines)


def test_exact_match_equals_the_jsonl(evaluated):
    lines, metrics = evaluated
    assert metrics["overall"]["exact_match"] == pytest.approx(exact_match(lines), abs=1e-6)
    for qtype, row in metrics["qtypes"].items():
        assert row["exact_match"] == pytest.approx(exact_match([x for x in lines if x["qtype"] == qtype]), abs=1e-6)


def hand_prompt(model, tokenizer, members: dict[str, bytes]) -> dict:
    """The prompt built by hand from a sample's members: the user turn (a video's `<video>` written out
    as `[t]<image>` per frame) and the decoded images."""
    record = json.loads(members["json"])
    question = record["messages"][0]["content"]
    if "video" in record:
        question = question.replace("<video>", "".join(f"[{t:.1f}s]<image>" for t in record["video"]["timestamps"]))
    names = ["png"] if "png" in members else [f"{i}.png" for i in range(question.count("<image>"))]
    images = [Image.open(io.BytesIO(members[name])).convert("RGB") for name in names]
    processor = casa_adapter.Processor.from_model(model, tokenizer)
    return processor([{"role": "user", "content": question}], images, add_generation_prompt=True)


def hand_generate(model, tokenizer, inputs: dict) -> str:
    """One unpadded greedy `model.generate` of a hand-built prompt, decoded up to its end-of-turn token."""
    out = model.generate(
        inputs["input_ids"][None],
        images=[inputs["images"]],
        max_new_tokens=TOKENS,
        do_sample=False,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    new = out[0, inputs["input_ids"].shape[0] :].tolist()
    new = new[: new.index(tokenizer.eos_token_id)] if tokenizer.eos_token_id in new else new
    return tokenizer.decode(new, skip_special_tokens=True).strip()


@pytest.mark.parametrize("qtype", ["color", "compare", "video_color"])
def test_prediction_equals_hand_run_generate(demo, adapter, evaluated, qtype):
    """Image, two-image and video samples: the batched, left-padded prediction is what one unpadded
    `model.generate` of the hand-built prompt gives."""
    _, model, tokenizer = adapter
    lines, _ = evaluated
    line = next(x for x in lines if x["qtype"] == qtype)
    inputs = hand_prompt(model, tokenizer, read_tar(demo / "val" / "shard-000000.tar")[line["id"]])
    assert inputs["images"].shape[0] == {"color": 1, "compare": 2, "video_color": 3}[qtype]
    assert line["prediction"] == hand_generate(model, tokenizer, inputs)
    assert line["question"].count("<image>") == inputs["images"].shape[0]


def test_references_bad_samples_and_folder_shards(demo, adapter, evaluated, tmp_path):
    """A loose-file shard where a third of the samples take their predictions as `answers`, a third
    (no `answers`) as the assistant message, plus one bad sample: counted, not fatal."""
    lines, _ = evaluated
    folder = tmp_path / "rewritten"
    folder.mkdir()
    for i, (key, members) in enumerate(read_tar(demo / "val" / "shard-000000.tar").items()):
        record = json.loads(members.pop("json"))
        if i % 3 == 0:
            record["answers"] = [lines[i]["prediction"]]
        elif i % 3 == 1:
            del record["answers"]
            record["messages"][1]["content"] = lines[i]["prediction"] or "-"
        (folder / f"{key}.json").write_text(json.dumps(record))
        for ext, data in members.items():
            (folder / f"{key}.{ext}").write_bytes(data)
    (folder / "zzz.json").write_text("{not json")
    out, metrics_path = tmp_path / "preds.jsonl", tmp_path / "metrics.json"
    assert (
        main(
            [
                "--adapter",
                str(adapter[0]),
                "--base",
                "tiny",
                "--shards",
                str(folder),
                "--out",
                str(out),
                "--json",
                str(metrics_path),
                "--metrics",
                "em",
                "--max-new-tokens",
                str(TOKENS),
                "--quiet",
            ]
        )
        == 0
    )
    again, metrics = read_jsonl(out), json.loads(metrics_path.read_text())
    assert [x["prediction"] for x in again] == [x["prediction"] for x in lines]
    assert [x["answers"] for x in again][1] == [lines[1]["prediction"] or "-"]
    assert metrics["samples"]["bad"] == 1 and metrics["samples"]["reasons"] == {"invalid_json": 1}
    assert metrics["overall"]["exact_match"] == pytest.approx(exact_match(again), abs=1e-6)
    assert metrics["overall"]["exact_match"] >= 2 / 3 - 1e-6


def test_recipe_zero_shot_with_limit(demo, tmp_path):
    """`--recipe`: the recipe's untrained model on its validation shards (the default), first 5 samples."""
    recipe = write_recipe(tmp_path / "recipe.yaml", tiny_recipe(tmp_path, demo))
    out = tmp_path / "preds.jsonl"
    assert (
        main(
            [
                "--recipe",
                str(recipe),
                "--limit",
                "5",
                "--batch-size",
                "2",
                "--max-new-tokens",
                "2",
                "--out",
                str(out),
                "--quiet",
            ]
        )
        == 0
    )
    assert [x["id"] for x in read_jsonl(out)] == [f"val-{i:06d}" for i in range(5)]


def test_errors_are_clear(demo, adapter, tmp_path, capsys):
    val = str(demo / "val")
    assert main(["--adapter", str(tmp_path / "nope"), "--base", "tiny", "--shards", val]) == 2
    assert "adapter directory" in capsys.readouterr().err
    assert main(["--adapter", str(adapter[0]), "--base", "tiny", "--shards", str(tmp_path / "none.tar")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert (
        main(
            [
                "--adapter",
                str(adapter[0]),
                "--base",
                str(tmp_path / "missing.gguf"),
                "--shards",
                val,
                "--out",
                str(tmp_path / "p.jsonl"),
            ]
        )
        == 2
    )
    assert "missing.gguf does not exist" in capsys.readouterr().err  # load_base's error
    assert main(["--adapter", str(adapter[0]), "--shards", val]) == 2
    assert "trained on 'tiny'" in capsys.readouterr().err  # names the base the adapter was trained on
    llm, _ = load_base("tiny")
    casa_adapter.wrap(llm, vision=tiny_tower(), every=2).save_adapter(str(tmp_path / "custom"))
    assert main(["--adapter", str(tmp_path / "custom"), "--base", "tiny", "--shards", val]) == 2
    assert "custom vision tower" in capsys.readouterr().err
    assert not (tmp_path / "p.jsonl").exists()


@pytest.mark.parametrize("recipe", sorted(str(p.relative_to(ROOT)) for p in (ROOT / "recipes").glob("*.yaml")))
def test_every_recipe_gives_model_settings(recipe):
    """`--recipe` reads each shipped recipe's model block, system prompt and validation shards."""
    parsed = read_recipe(str(ROOT / recipe))
    assert parsed.model.base and parsed.model.adapter is None and parsed.val


def test_saved_run_config_gives_model_settings(tmp_path):
    """The `config.yaml` LightningCLI saves with a run nests settings as `{class_path, init_args}`."""
    config = {
        "model": {
            "class_path": "casa_adapter.CasaModule",
            "init_args": {
                "system_prompt": "",
                "model": {
                    "base": "tiny",
                    "casa": {"class_path": "casa_adapter.CasaSettings", "init_args": {"every": 2}},
                    "vision": {"class_path": "casa_adapter.VisionSettings", "init_args": {"name": "siglip-tiny"}},
                    "lora": None,
                },
            },
        },
        "data": {
            "class_path": "casa_adapter.data.CasaDataModule",
            "init_args": {"val": "v", "settings": {"max_frames": 4}},
        },
    }
    parsed = read_recipe(str(write_recipe(tmp_path / "config.yaml", config)))
    assert (parsed.model.casa.every, parsed.model.vision.name, parsed.model.lora) == (2, "siglip-tiny", None)
    assert (parsed.system_prompt, parsed.val, parsed.decode) == ("", ["v"], {"max_frames": 4})


def test_blank_images_is_the_grey_image_control(demo, adapter, tmp_path):
    """`--blank-images`: every image becomes uniform grey of the same size, so the prediction is the one a
    hand-built prompt with grey images gives (and it no longer depends on the picture)."""
    from casa_adapter.data.decode import BLANK_GREY

    _, model, tokenizer = adapter
    out = tmp_path / "blank.jsonl"
    assert (
        main(
            [
                "--adapter",
                str(adapter[0]),
                "--base",
                "tiny",
                "--shards",
                str(demo / "val"),
                "--out",
                str(out),
                "--max-new-tokens",
                str(TOKENS),
                "--quiet",
                "--blank-images",
                "--limit",
                "4",
            ]
        )
        == 0
    )
    lines = read_jsonl(out)
    samples = read_tar(demo / "val" / "shard-000000.tar")
    for line in lines[:2]:
        raw = samples[line["id"]]
        size = Image.open(io.BytesIO(raw[next(k for k in raw if k.endswith("png"))])).size
        grey = io.BytesIO()
        Image.new("RGB", size, BLANK_GREY).save(grey, format="PNG")
        blanked = {k: (grey.getvalue() if k.endswith("png") else v) for k, v in raw.items()}
        assert line["prediction"] == hand_generate(model, tokenizer, hand_prompt(model, tokenizer, blanked))
