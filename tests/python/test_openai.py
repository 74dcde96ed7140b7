"""The official openai SDK against full_proxy's OpenAI routes (demo mode)."""
import os

import openai
import pytest

URL = os.environ["GATEWAY_URL"]
TOKEN = os.environ["GATEWAY_TOKEN"]

_CLIENTS = {}


def client(key=TOKEN):
    if key not in _CLIENTS:
        # max_retries=0: a refusal must surface here, not be retried by the SDK.
        _CLIENTS[key] = openai.OpenAI(api_key=key, base_url=URL + "/v1", max_retries=0)
    return _CLIENTS[key]


def ask(**kw):
    return dict(model="gemini-2.5-flash", messages=[{"role": "user", "content": "Tell me about rivers"}], **kw)


def test_chat_completion():
    r = client().chat.completions.create(**ask())
    assert r.object == "chat.completion"
    assert r.choices[0].message.role == "assistant"
    assert r.choices[0].message.content and len(r.choices[0].message.content) > 20
    assert r.choices[0].finish_reason == "stop"
    assert r.usage.prompt_tokens > 0 and r.usage.total_tokens >= r.usage.completion_tokens > 0


def test_streamed_chat_matches_the_unary_answer_with_one_finish_reason_and_usage():
    chunks = list(client().chat.completions.create(**ask(stream=True, stream_options={"include_usage": True})))
    assert len(chunks) > 2
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == ["stop"]
    assert chunks[-1].choices == [] and chunks[-1].usage.total_tokens > 0
    whole = client().chat.completions.create(**ask()).choices[0].message.content
    assert text == whole


def test_models_list_and_retrieve():
    ids = [m.id for m in client().models.list()]
    assert "gemini-2.5-flash" in ids
    m = client().models.retrieve("gemini-2.5-pro")
    assert m.id == "gemini-2.5-pro" and m.object == "model"


def test_embeddings():
    e = client().embeddings.create(model="text-embedding-004", input=["a", "b"])
    assert [d.index for d in e.data] == [0, 1]
    assert len(e.data[0].embedding) > 0


def test_wrong_token_is_401():
    with pytest.raises(openai.AuthenticationError) as err:
        client("not-a-valid-token").chat.completions.create(**ask())
    assert err.value.status_code == 401


def test_unknown_model_is_404():
    with pytest.raises(openai.NotFoundError):
        client().chat.completions.create(model="no-such-model", messages=[{"role": "user", "content": "hi"}])


def test_malformed_request_is_400():
    with pytest.raises(openai.BadRequestError) as err:
        client().chat.completions.create(model="gemini-2.5-flash", messages=[])
    assert err.value.status_code == 400


PNG = b"\x89PNG\r\n\x1a\n"


def test_images_generate_answers_b64_json():
    import base64

    r = client().images.generate(model="gemini-2.5-flash-image", prompt="a red fox", n=2, response_format="b64_json")
    assert len(r.data) == 2
    assert base64.b64decode(r.data[0].b64_json).startswith(PNG)


def test_a_generated_image_reaches_message_images_unary_and_streamed():
    import base64

    image_ask = dict(model="gemini-2.5-flash-image", messages=[{"role": "user", "content": "a red fox"}])
    m = client().chat.completions.create(**image_ask).choices[0].message
    url = m.images[0]["image_url"]["url"]
    assert url.startswith("data:image/png;base64,") and "data:" not in (m.content or "")
    assert base64.b64decode(url.split(",", 1)[1]).startswith(PNG)
    chunks = list(client().chat.completions.create(stream=True, **image_ask))
    images = [i for c in chunks if c.choices for i in (getattr(c.choices[0].delta, "images", None) or [])]
    assert len(images) == 1 and images[0]["image_url"]["url"] == url
