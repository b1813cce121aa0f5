"""Request checks of `casa-adapter serve` (HTTP side): every bad input is a ServeError with its 4xx status."""

import base64

import numpy as np
import pytest

from casa_adapter.serve.errors import ServeError
from casa_adapter.serve.images import encode_data_uri
from casa_adapter.serve.requests import chat_request, frame_request, text_request
from casa_adapter.serve.settings import ServeSettings

SETTINGS = ServeSettings(max_images=2, max_image_pixels=64 * 64)
PICTURE = encode_data_uri(np.full((8, 12, 3), 200, dtype=np.uint8))


def chat(*parts, **options):
    return {"messages": [{"role": "user", "content": list(parts)}], **options}


def image(url):
    return {"type": "image_url", "image_url": {"url": url}}


def test_chat_request_decodes_images_in_order():
    got = chat_request(chat(image(PICTURE), {"type": "text", "text": "What is it?"}, max_tokens=5), SETTINGS)
    assert got["messages"][0]["content"] == [{"type": "image"}, {"type": "text", "text": "What is it?"}]
    assert got["images"][0].shape == (8, 12, 3) and got["images"][0].dtype == np.uint8
    assert (got["max_tokens"], got["temperature"], got["stream"]) == (5, 0.0, False)


@pytest.mark.parametrize(
    ("body", "status", "match"),
    [
        (chat(image("data:image/png;base64,@@@")), 400, "corrupt base64"),
        (chat(image("data:image/png;base64," + base64.b64encode(b"not an image").decode())), 400, "not a readable"),
        (chat(image(encode_data_uri(np.zeros((65, 64, 3), dtype=np.uint8)))), 413, "max_image_pixels"),
        (chat(image(PICTURE), image(PICTURE), image(PICTURE)), 400, "too many images"),
        (chat(image("http://example.com/a.png")), 400, "remote image URLs are refused"),
        (chat({"type": "text", "text": "hi"}, max_tokens=10**6), 400, "max_tokens"),
        ({"messages": []}, 400, "non-empty list"),
        ([1, 2], 400, "JSON object"),
    ],
)
def test_bad_chat_requests_get_their_status(body, status, match):
    with pytest.raises(ServeError, match=match) as e:
        chat_request(body, SETTINGS)
    assert e.value.status == status


def test_session_requests():
    assert frame_request("s1", {"image": PICTURE}, SETTINGS)["image"].shape == (8, 12, 3)
    assert text_request("s1", {"text": "Caption:", "max_tokens": 4}, SETTINGS)["max_tokens"] == 4
    with pytest.raises(ServeError, match="give some text"):
        text_request("s1", {}, SETTINGS)
