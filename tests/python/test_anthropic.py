"""The official anthropic SDK against full_proxy's Anthropic Messages routes (demo mode)."""
import os

import anthropic
import pytest

URL = os.environ["GATEWAY_URL"]
TOKEN = os.environ["GATEWAY_TOKEN"]
MODEL = "gemini-2.5-flash"

_CLIENTS = {}


def client(key=TOKEN):
    if key not in _CLIENTS:
        # max_retries=0: a refusal must surface here, not be retried by the SDK. The SDK sends
        # the key as `x-api-key` and `anthropic-version` on every request.
        _CLIENTS[key] = anthropic.Anthropic(api_key=key, base_url=URL, max_retries=0)
    return _CLIENTS[key]


def ask(prompt="Tell me about harbours", **kw):
    return dict(model=MODEL, max_tokens=1024, messages=[{"role": "user", "content": prompt}], **kw)


WEATHER = {
    "name": "get_weather",
    "description": "The weather for a place",
    "input_schema": {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "type": "object",
        "properties": {"place": {"type": "string"}, "days": {"type": "integer", "exclusiveMinimum": 0}},
        "additionalProperties": False,
    },
}


def test_plain_message():
    m = client().messages.create(**ask(system="Be concise."))
    assert m.type == "message" and m.role == "assistant"
    assert m.model == MODEL
    assert m.stop_reason == "end_turn"
    assert m.content[0].type == "text" and len(m.content[0].text) > 20
    assert m.usage.input_tokens > 0 and m.usage.output_tokens > 0


def test_streamed_message_matches_the_unary_answer():
    kinds = []
    with client().messages.stream(**ask()) as stream:
        for event in stream:
            kinds.append(event.type)
        final = stream.get_final_message()
    # The raw events the SDK saw, in Anthropic's order (the SDK adds its own helper events).
    raw = [k for k in kinds if k in ("message_start", "content_block_start", "content_block_delta",
                                      "content_block_stop", "message_delta", "message_stop")]
    assert raw[0] == "message_start" and raw[1] == "content_block_start"
    assert raw[-3:] == ["content_block_stop", "message_delta", "message_stop"]
    assert final.stop_reason == "end_turn"
    assert final.usage.output_tokens > 0 and final.usage.input_tokens > 0
    whole = client().messages.create(**ask())
    assert final.content[0].text == whole.content[0].text


def test_tool_use_round_trip_streamed():
    params = ask("What is the weather in Lisbon?", tools=[WEATHER], tool_choice={"type": "any"})
    with client().messages.stream(**params) as stream:
        first = stream.get_final_message()
    assert first.stop_reason == "tool_use"
    call = next(b for b in first.content if b.type == "tool_use")
    assert call.name == "get_weather" and isinstance(call.input, dict)
    assert call.id.startswith("toolu_")
    follow = ask(tools=[WEATHER])
    follow["messages"] = [
        {"role": "user", "content": "What is the weather in Lisbon?"},
        {"role": "assistant", "content": first.content},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": call.id, "content": "sunny, 24 C"}]},
    ]
    second = client().messages.create(**follow)
    assert second.stop_reason == "end_turn"
    assert "get_weather" in second.content[0].text and "sunny" in second.content[0].text


def test_thinking_tool_round_trip_on_gemini_3_keeps_the_signature():
    params = dict(
        model="gemini-3-pro-preview",
        max_tokens=4096,
        thinking={"type": "enabled", "budget_tokens": 2048},
        tools=[WEATHER],
        tool_choice={"type": "any"},
        messages=[{"role": "user", "content": "Plan a trip to Lisbon"}],
    )
    first = client().messages.create(**params)
    thinking = [b for b in first.content if b.type == "thinking"]
    assert thinking and thinking[0].thinking and thinking[0].signature
    call = next(b for b in first.content if b.type == "tool_use")
    # Gemini 3 refuses the next turn if the signature is lost; the SDK's typed blocks carry it.
    params["tool_choice"] = {"type": "auto"}
    params["messages"] = params["messages"] + [
        {"role": "assistant", "content": first.content},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": call.id, "content": "booked"}]},
    ]
    second = client().messages.create(**params)
    assert second.stop_reason == "end_turn"
    # Only the tool_use (its id carries the signature), as a client that drops thinking does.
    params["messages"][1] = {"role": "assistant", "content": [call]}
    third = client().messages.create(**params)
    assert third.stop_reason == "end_turn"


PNG = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg=="


def test_image_input():
    m = client().messages.create(
        model=MODEL,
        max_tokens=256,
        messages=[{"role": "user", "content": [
            {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": PNG}},
            {"type": "text", "text": "Describe this image"},
        ]}],
    )
    assert m.content[0].type == "text" and m.content[0].text


def test_count_tokens():
    short = client().messages.count_tokens(model=MODEL, messages=[{"role": "user", "content": "hi"}])
    longer = client().messages.count_tokens(
        model=MODEL, system="A much longer system prompt with many more words in it than before.",
        messages=[{"role": "user", "content": "hi"}], tools=[WEATHER],
    )
    assert 0 < short.input_tokens < longer.input_tokens


def test_wrong_token_is_an_authentication_error():
    with pytest.raises(anthropic.AuthenticationError) as err:
        client("not-a-valid-token").messages.create(**ask())
    assert err.value.status_code == 401
    assert err.value.body["error"]["type"] == "authentication_error"


def test_unknown_claude_model_is_a_not_found_error_naming_model_aliases():
    with pytest.raises(anthropic.NotFoundError) as err:
        client().messages.create(**dict(ask(), model="claude-no-such-model"))
    assert "MODEL_ALIASES" in err.value.body["error"]["message"]


def test_a_claude_name_is_served_through_model_aliases():
    # run.sh starts the gateway with MODEL_ALIASES=claude-sonnet-4-5=gemini-2.5-flash,...
    m = client().messages.create(**dict(ask(), model="claude-sonnet-4-5"))
    assert m.model == "claude-sonnet-4-5"
    assert m.content[0].text == client().messages.create(**ask()).content[0].text


def test_models_list_and_retrieve():
    ids = [m.id for m in client().models.list(limit=1000)]
    assert "gemini-2.5-flash" in ids and "claude-sonnet-4-5" in ids
    m = client().models.retrieve("gemini-2.5-pro")
    assert m.id == "gemini-2.5-pro" and m.type == "model"
