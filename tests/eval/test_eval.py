"""`casa-adapter eval` on a tiny demo set: the JSONL, the metrics JSON, image / multi-image / video
samples, equality with a hand-run `generate`, bad samples and the grey-image control (recipes and
errors: test_eval_recipes.py).

Nothing is trained: the adapter is a tiny random Llama wrapped with a random `siglip-tiny` tower,
its new parameters given random values (so that answers depend on the images), saved and evaluated.
"""

from __future__ import annotations

# ruff: noqa: F401, F811  (the shared fixtures are imported by name and requested as arguments)
import io
import json

import pytest
from eval_fixtures import KEYS, N_VAL, QTYPES, TOKENS, adapter, demo, read_jsonl, read_tar
from PIL import Image

import casa_adapter
from casa_adapter.eval import main
from casa_adapter.metrics import ExactMatch

pytestmark = pytest.mark.filterwarnings("ignore:VQAAccuracy")  # single-answer data: the metric warns, rightly


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
