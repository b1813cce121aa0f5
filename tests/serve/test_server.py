"""`casa-adapter serve` over real HTTP: the OpenAI client (plain and streamed), a 32-frame video session, and
every bad input answered with a clear 4xx while the server keeps serving."""

import base64
import io
import itertools
import subprocess
import sys

import httpx
import numpy as np
import pytest
from PIL import Image

openai = pytest.importorskip("openai", reason="the OpenAI client is in the [test] extra")
pytest.importorskip("litserve", reason="casa-adapter serve needs the [serve] extra (litserve)")
from casa_adapter.serve.launch import ServerProcess  # noqa: E402

MAKE_ADAPTER = """
import sys, casa_adapter
from casa_adapter.backbone.base_models import load_base
llm, _ = load_base("tiny")
casa_adapter.wrap(llm, vision="siglip-tiny", pretrained=False, pool=2).save_adapter(sys.argv[1])
"""


def data_uri(seed: int, size=(40, 50)) -> str:
    array = (np.random.default_rng(seed).random((*size, 3)) * 255).astype("uint8")
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    adapter = tmp_path_factory.mktemp("serve") / "adapter"
    subprocess.run([sys.executable, "-c", MAKE_ADAPTER, str(adapter)], check=True)
    with ServerProcess(adapter, ["--max-images", "2", "--max-image-bytes", "200000"]) as running:
        yield running.url


def client(url):
    return openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0)


def test_chat_plain_and_streamed_with_the_openai_client(server):
    messages = [
        {
            "role": "user",
            "content": [
                {"type": "image_url", "image_url": {"url": data_uri(0)}},
                {"type": "text", "text": "What is in the picture?"},
            ],
        }
    ]
    plain = client(server).chat.completions.create(model="casa", messages=messages, max_tokens=8, temperature=0)
    assert plain.object == "chat.completion" and plain.choices[0].finish_reason in ("length", "stop")
    assert plain.usage.completion_tokens <= 8 and plain.usage.prompt_tokens > 5
    ask = {"model": "casa", "messages": messages, "max_tokens": 8, "temperature": 0}
    chunks = list(client(server).chat.completions.create(**ask, stream=True))
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks)
    assert streamed == plain.choices[0].message.content  # greedy: the same answer, token by token
    assert chunks[-1].choices[0].finish_reason == plain.choices[0].finish_reason


def test_video_session_of_32_frames(server):
    sid = httpx.post(server + "/v1/sessions").json()["id"]
    answers = []
    for k in range(32):
        frame = httpx.post(f"{server}/v1/sessions/{sid}/frames", json={"image": data_uri(k)}, timeout=30)
        assert frame.status_code == 200 and frame.json()["frames"] == k + 1
        if k % 8 == 7:
            ask = {"text": "What happens?", "max_tokens": 4}
            answers.append(httpx.post(f"{server}/v1/sessions/{sid}/text", json=ask, timeout=30).json())
    with httpx.stream(
        "POST", f"{server}/v1/sessions/{sid}/text", json={"text": "Go on", "max_tokens": 3, "stream": True}
    ) as response:
        events = [line for line in response.iter_lines() if line.startswith("data: ")]
    assert events[-1] == "data: [DONE]" and '"object": "text"' in events[-2]
    growth = [b["state_bytes"] - a["state_bytes"] for a, b in itertools.pairwise(answers)]
    assert len(set(growth)) == 1, answers  # 8 frames + a question each time: the same growth, no image history
    assert httpx.delete(f"{server}/v1/sessions/{sid}").json()["deleted"] is True


def user(*parts) -> dict:
    return {"messages": [{"role": "user", "content": list(parts)}]}


def image(url: str) -> dict:
    return {"type": "image_url", "image_url": {"url": url}}


BAD = [
    ("not json", b"{nope", 400, "not valid JSON"),
    ("no messages", {"model": "m"}, 400, "messages must be a non-empty list"),
    ("bad part", user({"type": "audio"}), 400, "'audio' is not supported"),
    ("corrupt base64", user(image("data:image/png;base64,@@not*base64")), 400, "base64"),
    ("not an image", user(image("data:image/png;base64,AAAA")), 400, "image"),
    ("remote image", user(image("http://x/y.png")), 400, "remote"),
    ("too many images", user(*[image(data_uri(k)) for k in range(3)]), 400, "max_images=2"),
    ("huge image", user(image(data_uri(0, (400, 400)))), 413, "bytes"),
    ("max_tokens", {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 10**6}, 400, "max_tokens"),
    ("prompt over the context", {"messages": [{"role": "user", "content": "hi " * 1500}]}, 400, "past the model's"),
    ("placeholder mismatch", {"messages": [{"role": "user", "content": "<image> hi"}]}, 400, "placeholder"),
]


@pytest.mark.parametrize("name,body,status,words", BAD, ids=[b[0] for b in BAD])
def test_bad_chat_input_gets_a_clear_4xx(server, name, body, status, words):
    kw = {"content": body} if isinstance(body, bytes) else {"json": body}
    response = httpx.post(server + "/v1/chat/completions", timeout=30, **kw)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["code"] == status and words.lower() in error["message"].lower(), error


def test_bad_session_calls_and_the_server_keeps_serving(server):
    assert httpx.post(server + "/v1/sessions/nope/frames", json={"image": data_uri(0)}).status_code == 404
    assert httpx.post(server + "/v1/sessions/nope/text", json={"text": "hi"}).status_code == 404
    assert httpx.delete(server + "/v1/sessions/nope").status_code == 404
    sid = httpx.post(server + "/v1/sessions").json()["id"]
    assert httpx.post(f"{server}/v1/sessions/{sid}/frames", json={"image": 3}).status_code == 400
    assert httpx.post(f"{server}/v1/sessions/{sid}/text", json={"text": ""}).status_code == 400
    with pytest.raises(openai.BadRequestError, match="messages must be a non-empty list"):
        client(server).chat.completions.create(model="casa", messages=[])
    ok = client(server).chat.completions.create(model="casa", max_tokens=2, **user({"type": "text", "text": "hi"}))
    assert ok.usage.completion_tokens >= 1
    metrics = httpx.get(server + "/v1/metrics").json()
    assert metrics["sessions"] >= 1 and metrics["refused"] >= 4 and metrics["tokens"] > 0
