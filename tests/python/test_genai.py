"""The google-genai SDK against full_proxy's native Gemini routes (demo mode)."""
import os

import pytest
from google import genai
from google.genai import errors, types

URL = os.environ["GATEWAY_URL"]
TOKEN = os.environ["GATEWAY_TOKEN"]


_CLIENTS = {}


def client(key=TOKEN):
    # Keep clients alive: the SDK closes its HTTP client when a Client is garbage collected.
    if key not in _CLIENTS:
        _CLIENTS[key] = genai.Client(api_key=key, http_options=types.HttpOptions(base_url=URL))
    return _CLIENTS[key]


def test_generate_content():
    r = client().models.generate_content(model="gemini-2.5-flash", contents="Tell me about rivers")
    assert r.text and len(r.text) > 20
    assert r.candidates[0].finish_reason == types.FinishReason.STOP
    assert r.usage_metadata.total_token_count > 0


def test_stream_generate_content_arrives_in_several_chunks():
    chunks = list(client().models.generate_content_stream(model="gemini-2.5-flash", contents="Tell me about rivers"))
    assert len(chunks) > 1
    text = "".join(c.text or "" for c in chunks)
    whole = client().models.generate_content(model="gemini-2.5-flash", contents="Tell me about rivers").text
    assert text == whole
    assert chunks[-1].candidates[0].finish_reason == types.FinishReason.STOP


def test_models_list_and_get():
    names = [m.name for m in client().models.list()]
    assert "models/gemini-2.5-flash" in names
    m = client().models.get(model="gemini-2.5-pro")
    assert m.name == "models/gemini-2.5-pro"


def test_count_tokens_and_embeddings():
    assert client().models.count_tokens(model="gemini-2.5-flash", contents="one two three").total_tokens > 0
    e = client().models.embed_content(model="text-embedding-004", contents=["a", "b"])
    assert len(e.embeddings) == 2 and len(e.embeddings[0].values) > 0


def test_unknown_model_is_404():
    with pytest.raises(errors.ClientError) as err:
        client().models.generate_content(model="no-such-model", contents="hi")
    assert err.value.code == 404


def test_wrong_token_is_401():
    with pytest.raises(errors.ClientError) as err:
        client("not-a-valid-token").models.generate_content(model="gemini-2.5-flash", contents="hi")
    assert err.value.code == 401


def test_a_streamed_image_arrives_whole_in_one_part():
    chunks = list(client().models.generate_content_stream(model="gemini-2.5-flash-image", contents="a red fox"))
    images = [p.inline_data for c in chunks for p in (c.candidates[0].content.parts or []) if p.inline_data]
    assert len(images) == 1
    assert images[0].mime_type == "image/png" and images[0].data.startswith(b"\x89PNG\r\n\x1a\n")
    assert chunks[-1].candidates[0].finish_reason == types.FinishReason.STOP


def test_upload_then_generate_with_the_file(tmp_path):
    # The SDK's resumable upload: the session URL it gets back points at the gateway.
    path = tmp_path / "notes.txt"
    path.write_text("The meeting moved to Thursday at ten.")
    f = client().files.upload(file=str(path), config={"mime_type": "text/plain", "display_name": "notes"})
    assert f.name.startswith("files/")
    r = client().models.generate_content(model="gemini-2.5-flash", contents=[f, "Summarize the notes"])
    assert r.text and len(r.text) > 20
    assert client().files.get(name=f.name).name == f.name
    assert f.name in [x.name for x in client().files.list()]
    client().files.delete(name=f.name)
    with pytest.raises(errors.ClientError) as e:
        client().files.get(name=f.name)
    assert e.value.code == 404
