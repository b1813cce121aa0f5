"""`lmms-eval --model casa_adapter`, offline, on a local task: its answers equal `casa-adapter eval`'s.

The demo set's image, two-image and video samples are written as an lmms-eval task (a YAML and a
`utils.py` found through `--include_path`, the docs as local JSON lines, PNG files, the videos as
lossless FFV1 files at the samples' frame times). The lmms-eval command line runs on the tiny
model with `HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1`, with batch size 2; every answer it logs must be
`casa-adapter eval`'s prediction for the same sample. Multiple-choice requests check the
log-likelihoods against one unbatched forward per choice. Skipped without lmms-eval.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from fractions import Fraction
from pathlib import Path

import pytest
import torch
from PIL import Image

import casa_adapter
from casa_adapter.backbone.base_models import load_base
from casa_adapter.data.make_demo import DemoSettings, make_demo
from casa_adapter.data.shards import ShardReader, SourceIndex
from casa_adapter.data.sources import Source
from casa_adapter.eval import main as eval_main

from conftest import randomize_new_params

pytest.importorskip("lmms_eval", reason="lmms-eval is not installed (pip install 'casa-adapter[lmms]')")
import av

QTYPES = ("color", "compare", "video_color")
TOKENS = 6
OTHERS = ["red", "green", "second"]
OFFLINE = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}

UTILS = """
from PIL import Image


def doc_to_visual(doc):
    return [Image.open(p).convert("RGB") if p.endswith(".png") else p for p in doc["visuals"]]


def doc_to_text(doc, lmms_eval_specific_kwargs=None):
    return doc["question"]


def process_results(doc, results):
    return {"exact_match": float(results[0] == doc["answer"])}
"""

GENERATE_YAML = """
task: casa_demo
dataset_path: json
dataset_kwargs:
  data_files:
    test: {docs}
test_split: test
output_type: generate_until
doc_to_visual: !function utils.doc_to_visual
doc_to_text: !function utils.doc_to_text
doc_to_target: answer
generation_kwargs:
  max_new_tokens: {tokens}
process_results: !function utils.process_results
metric_list:
  - metric: exact_match
    aggregation: mean
    higher_is_better: true
"""


def write_video(path: Path, frames: list[bytes], times: list[float]) -> None:
    """Lossless FFV1 video of PNG frames at evenly spaced `times` (decoded back bit for bit)."""
    images = [Image.open(io.BytesIO(f)).convert("RGB") for f in frames]
    with av.open(str(path), "w") as container:
        stream = container.add_stream("ffv1", rate=Fraction(1 / (times[1] - times[0])).limit_denominator(1000))
        stream.width, stream.height = images[0].size
        stream.pix_fmt = "bgr0"
        for image in images:
            container.mux(stream.encode(av.VideoFrame.from_image(image)))
        container.mux(stream.encode())


def task_docs(shard: Path, folder: Path) -> list[dict]:
    """One lmms-eval doc per demo sample: the question as the shard has it, its images / video as files."""
    docs = []
    reader = ShardReader()
    for ref in SourceIndex.build(Source(shards=str(shard), name="val")).refs:
        key, members = ref.key, reader.read(ref)
        record = json.loads(members["json"])
        pngs = sorted(ext for ext in members if ext.endswith("png"))
        for ext in pngs:
            (folder / f"{key}.{ext}").write_bytes(members[ext])
        visuals = [str(folder / f"{key}.{ext}") for ext in pngs]
        if "video" in record:
            write_video(folder / f"{key}.mkv", [members[ext] for ext in pngs], record["video"]["timestamps"])
            visuals = [str(folder / f"{key}.mkv")]
        question = record["messages"][0]["content"]
        answer = record["answers"][0]
        choices = [answer, *[c for c in OTHERS if c != answer][:2]]
        docs.append(
            {"id": key, "question": question, "visuals": visuals, "answer": answer, "choices": choices, "label": 0}
        )
    return docs


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """(root, adapter dir, the model, its tokenizer, the lmms-eval docs)."""
    root = tmp_path_factory.mktemp("lmms")
    make_demo(DemoSettings(out=str(root / "demo"), train=0, val=6, image_size=32, qtypes=QTYPES), show_progress=False)
    llm, tokenizer = load_base("tiny")
    vision = casa_adapter.VisionSettings("siglip-tiny", pretrained=False, image_size=32)
    model = casa_adapter.wrap(llm, vision=vision, every=2)
    randomize_new_params(model, scale=0.5)
    model.save_adapter(str(root / "adapter"))
    (root / "media").mkdir()
    docs = task_docs(root / "demo" / "val" / "shard-000000.tar", root / "media")
    (root / "docs.jsonl").write_text("".join(json.dumps(doc) + "\n" for doc in docs))
    tasks = root / "tasks"
    tasks.mkdir()
    (tasks / "utils.py").write_text(UTILS)
    (tasks / "casa_demo.yaml").write_text(GENERATE_YAML.format(docs=root / "docs.jsonl", tokens=TOKENS))
    return root, root / "adapter", model.eval(), tokenizer, docs


def run_lmms_eval(root: Path, task: str, adapter: Path) -> dict[int, dict]:
    """The lmms-eval command line, offline, in a child process; its logged samples by doc index."""
    out = root / f"out_{task}"
    env = {**os.environ, **OFFLINE, "HF_HOME": str(root / "hf_home"), "TOKENIZERS_PARALLELISM": "false"}
    args = [sys.executable, "-m", "lmms_eval", "--model", "casa_adapter"]
    args += ["--model_args", f"adapter={adapter},base=tiny,device=cpu,batch_size=2", "--tasks", task]
    args += ["--include_path", str(root / "tasks"), "--output_path", str(out), "--log_samples"]
    done = subprocess.run(args, env=env, capture_output=True, text=True, timeout=600)
    found = list(out.rglob(f"*_samples_{task}.jsonl"))  # lmms-eval exits 0 even when the evaluation failed
    assert done.returncode == 0 and len(found) == 1, done.stdout[-3000:] + done.stderr[-3000:]
    samples = found[0]
    rows = [json.loads(line) for line in samples.read_text().splitlines()]
    return {row["doc_id"]: row for row in rows}


def test_lmms_eval_answers_equal_casa_adapter_eval(setup):
    root, adapter, _, _, docs = setup
    preds = root / "preds.jsonl"
    flags = ["--max-new-tokens", str(TOKENS), "--batch-size", "2", "--out", str(preds), "--quiet"]
    assert eval_main(["--adapter", str(adapter), "--base", "tiny", "--shards", str(root / "demo" / "val"), *flags]) == 0
    ours = {line["id"]: line["prediction"] for line in map(json.loads, preds.read_text().splitlines())}
    logged = run_lmms_eval(root, "casa_demo", adapter)
    assert sorted(logged) == list(range(len(docs))) and sorted(ours) == sorted(doc["id"] for doc in docs)
    theirs = {docs[i]["id"]: row["filtered_resps"] for i, row in logged.items()}
    assert theirs == ours
    assert len({ours[doc["id"]] for doc in docs}) > 1  # the answers differ between samples


def hand_logprob(model, tokenizer, doc: dict, continuation: str) -> float:
    """Sum of log-probs of `continuation` after the doc's prompt: one unpadded forward, built by hand."""
    processor = casa_adapter.Processor.from_model(model, tokenizer)
    visuals = doc["visuals"]
    if visuals[0].endswith(".mkv"):  # the video's frames are the shard's PNGs at 0.0, 0.5, 1.0 s
        question = doc["question"].replace("<video>", "[0.0s]<image>[0.5s]<image>[1.0s]<image>")
        visuals = [p.replace(".mkv", f".{i}.png") for p, i in zip(visuals * 3, range(3))]
    else:
        question = doc["question"]
    images = [Image.open(p).convert("RGB") for p in visuals]
    prompt = processor([{"role": "user", "content": question}], images, add_generation_prompt=True)
    cont = tokenizer.encode(continuation, add_special_tokens=False)
    ids = torch.cat([prompt["input_ids"], torch.tensor(cont)])[None]  # (1, P + C)
    with torch.no_grad():
        logits = model(ids, images=[prompt["images"]]).logits[0]  # (P + C, V)
    logprobs = torch.log_softmax(logits.float(), dim=-1)
    start = prompt["input_ids"].shape[0]
    return float(sum(logprobs[start - 1 + i, token] for i, token in enumerate(cont)))


def test_loglikelihood_through_the_lmms_eval_model(setup):
    """lmms-eval's registry builds the model from a `--model_args` string; multiple-choice requests shaped as
    lmms-eval's `construct_requests` makes them (context, " " + choice, doc_to_visual, doc_id, task, split),
    batched by 2, give each choice's negative log-likelihood of one unbatched forward (lmms-eval takes the
    argmin). lmms-eval 0.7.3's evaluator turns every (value, greedy) pair into a string
    (`unwrap_generation_output`), so its multiple-choice tasks cannot run end to end: the requests go to the
    model directly here."""
    from lmms_eval.api.instance import Instance
    from lmms_eval.models import get_model

    _, adapter, model, tokenizer, docs = setup
    task_utils: dict = {}
    exec(UTILS, task_utils)  # the task's own doc_to_visual

    lmm = get_model("casa_adapter").create_from_arg_string(
        f"adapter={adapter},base=tiny,device=cpu", {"batch_size": 2, "device": None}
    )
    assert lmm.batch_size == 2
    lmm.task_dict = {"choice": {"test": docs}}
    requests = [
        Instance(
            "loglikelihood",
            (doc["question"], " " + c, task_utils["doc_to_visual"], i, "choice", "test"),
            j,
            {"task": "choice", "doc_id": i, "repeats": 1},
        )
        for i, doc in enumerate(docs)
        for j, c in enumerate(doc["choices"])
    ]
    scores = [value for value, _ in lmm.loglikelihood(requests)]
    expected = [-hand_logprob(model, tokenizer, doc, " " + c) for doc in docs for c in doc["choices"]]
    assert scores == pytest.approx(expected, abs=1e-4)
    assert all(value > 0 for value in scores) and len(set(scores)) == len(scores)
