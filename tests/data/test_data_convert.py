"""Converters (LLaVA json, image + caption folders) and the deterministic demo dataset."""

from __future__ import annotations

import hashlib
import io
import json
import os
from collections import Counter

from PIL import Image

from casa_adapter.data.chat import read_chat
from casa_adapter.data.commands import main as data_main
from casa_adapter.data.demo_tasks import TASKS
from casa_adapter.data.make_demo import DemoSettings, make_demo
from casa_adapter.data.shards import ShardReader, SourceIndex
from casa_adapter.data.sources import Source


def samples_of(folder: str) -> dict[str, dict[str, bytes]]:
    index, reader = SourceIndex.build(Source(folder)), ShardReader()
    return {ref.key: reader.read(ref) for ref in index.refs}


def test_convert_llava_single_multi_text_only_and_missing(tmp_path) -> None:
    (tmp_path / "img" / "coco").mkdir(parents=True)
    for name, color in (("a.jpg", "red"), ("b.png", "blue"), ("c.bmp", "green")):
        Image.new("RGB", (8, 8), color).save(tmp_path / "img" / "coco" / name)
    entries = [
        {
            "id": "000.1",
            "image": "coco/a.jpg",
            "conversations": [{"from": "human", "value": "What is it?"}, {"from": "gpt", "value": "red"}],
        },
        {
            "id": "multi",
            "image": ["coco/b.png", "coco/c.bmp"],
            "conversations": [{"from": "human", "value": "<image> vs <image>?"}, {"from": "gpt", "value": "blue"}],
        },
        {"id": "text", "conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello"}]},
        {"id": "gone", "image": "coco/missing.jpg", "conversations": []},
    ]
    (tmp_path / "llava.json").write_text(json.dumps(entries))
    argv = [
        "convert",
        "llava",
        "--json",
        str(tmp_path / "llava.json"),
        "--images",
        str(tmp_path / "img"),
        "--out",
        str(tmp_path / "out"),
        "--maxcount",
        "2",
        "--quiet",
    ]
    assert data_main(argv) == 0
    got = samples_of(str(tmp_path / "out"))
    assert sorted(got) == ["000_1", "multi", "text"]
    assert set(got["000_1"]) == {"json", "jpg"} and set(got["multi"]) == {"json", "0.png", "1.png"}
    chat = read_chat(json.loads(got["000_1"]["json"]), list(got["000_1"]), 2.0, 16)
    assert chat.messages[0]["content"] == "<image>\nWhat is it?"  # LLaVA's implicit image placeholder
    assert read_chat(json.loads(got["multi"]["json"]), list(got["multi"]), 2.0, 16).image_exts == ["0.png", "1.png"]
    assert len(os.listdir(tmp_path / "out")) == 2


def test_convert_llava_takes_only_images_inside_the_images_folder(tmp_path, caplog, capsys) -> None:
    (tmp_path / "img" / "coco").mkdir(parents=True)
    secret = tmp_path / "secret.png"
    Image.new("RGB", (8, 8), "red").save(secret)
    Image.new("RGB", (8, 8), "blue").save(tmp_path / "img" / "coco" / "ok.png")
    os.symlink(secret, tmp_path / "img" / "coco" / "escape.png")  # a symlink that points out
    os.symlink(tmp_path / "img" / "coco" / "ok.png", tmp_path / "img" / "inside.png")  # one that stays in
    chat = [{"from": "human", "value": "<image>\nWhat?"}, {"from": "gpt", "value": "blue"}]
    entries = [
        {"id": "ok", "image": "coco/ok.png", "conversations": chat},
        {"id": "link-in", "image": "inside.png", "conversations": chat},
        {"id": "dotdot", "image": "coco/../../secret.png", "conversations": chat},
        {"id": "absolute", "image": str(secret), "conversations": chat},
        {"id": "link-out", "image": "coco/escape.png", "conversations": chat},
        {"id": "one-of-two", "image": ["coco/ok.png", "../secret.png"], "conversations": chat},
    ]
    (tmp_path / "llava.json").write_text(json.dumps(entries))
    argv = ["convert", "llava", "--json", str(tmp_path / "llava.json"), "--images", str(tmp_path / "img")]
    with caplog.at_level("WARNING", logger="casa_adapter.data"):
        assert data_main([*argv, "--out", str(tmp_path / "out"), "--quiet"]) == 0
    assert sorted(samples_of(str(tmp_path / "out"))) == ["link-in", "ok"]
    logged = " ".join(r.getMessage() for r in caplog.records)
    assert all(f"'{ident}'" in logged for ident in ("dotdot", "absolute", "link-out", "one-of-two"))
    assert logged.count("outside_images") == 4 and "skipped/outside_images: 4" in capsys.readouterr().out


def test_convert_folder_pairs_images_with_captions(tmp_path) -> None:
    (tmp_path / "pics" / "sub").mkdir(parents=True)
    Image.new("RGB", (8, 8), "red").save(tmp_path / "pics" / "x.jpg")
    (tmp_path / "pics" / "x.txt").write_text("a red square\n")
    Image.new("RGB", (8, 8), "blue").save(tmp_path / "pics" / "sub" / "y.png")
    (tmp_path / "pics" / "sub" / "y.txt").write_text("a blue square")
    Image.new("RGB", (8, 8), "blue").save(tmp_path / "pics" / "nocap.png")
    assert (
        data_main(["convert", "folder", "--images", str(tmp_path / "pics"), "--out", str(tmp_path / "out"), "--quiet"])
        == 0
    )
    got = samples_of(str(tmp_path / "out"))
    assert sorted(got) == ["sub_y", "x"]
    record = json.loads(got["x"]["json"])
    assert record["messages"][1]["content"] == "a red square" and "<image>" in record["messages"][0]["content"]


def shard_digest(folder: str) -> str:
    h = hashlib.sha256()
    for name in sorted(os.listdir(folder)):
        h.update(name.encode())
        with open(os.path.join(folder, name), "rb") as f:
            h.update(f.read())
    return h.hexdigest()


def test_make_demo_is_deterministic_balanced_and_text_only_is_at_chance(tmp_path) -> None:
    n_types = len(TASKS)
    settings = dict(seed=3, train=n_types * 150, val=n_types * 100, image_size=24, maxcount=500)
    meta = make_demo(DemoSettings(out=str(tmp_path / "a"), **settings), show_progress=False)
    make_demo(DemoSettings(out=str(tmp_path / "b"), **settings), show_progress=False)
    for split in ("train", "val"):
        assert shard_digest(str(tmp_path / "a" / split)) == shard_digest(str(tmp_path / "b" / split))
    train = samples_of(str(tmp_path / "a" / "train"))
    records = [json.loads(m["json"]) for m in train.values()]
    assert Counter(r["qtype"] for r in records) == dict.fromkeys(TASKS, 150)
    for q, task in TASKS.items():
        answers = Counter(r["answers"][0] for r in records if r["qtype"] == q)
        assert set(answers) == set(task.answers) and max(answers.values()) - min(answers.values()) <= 1, (q, answers)
    for key, members in list(train.items())[:n_types]:
        record = json.loads(members["json"])
        chat = read_chat(record, list(members), 2.0, 16)
        assert len(chat.image_exts) == {"compare": 2, "video_color": 3, "video_motion": 3}.get(record["qtype"], 1)
        assert Image.open(io.BytesIO(members[chat.image_exts[0]])).size == (24, 24)
        assert record["id"] == key and len(record["messages"][1]["content"].split()) == 1
    for q, accuracy in meta["text_only_val_accuracy"].items():
        assert accuracy <= meta["qtypes"][q]["chance"] + 0.12, (q, accuracy)
    assert json.loads((tmp_path / "a" / "meta.json").read_text())["format"] == "casa-demo/1"


def test_make_demo_command_and_subset(tmp_path) -> None:
    out = tmp_path / "demo"
    assert (
        data_main(
            [
                "make-demo",
                "--out",
                str(out),
                "--train",
                "12",
                "--val",
                "6",
                "--image-size",
                "32",
                "--qtypes",
                "color,count",
                "--quiet",
            ]
        )
        == 0
    )
    records = [json.loads(m["json"]) for m in samples_of(str(out / "val")).values()]
    assert Counter(r["qtype"] for r in records) == {"color": 3, "count": 3}
    assert data_main(["check", str(out / "train"), str(out / "val"), "--quiet"]) == 0
    assert data_main(["make-demo", "--out", str(out), "--qtypes", "nope", "--quiet"]) == 2
