"""The official openai SDK's Responses API (`client.responses`) against full_proxy (demo mode)."""
import json
import os
import urllib.request

import openai
import pytest

URL = os.environ["GATEWAY_URL"]
TOKEN = os.environ["GATEWAY_TOKEN"]
ADMIN = os.environ["GATEWAY_ADMIN_TOKEN"]
MODEL = "gemini-2.5-flash"

WEATHER = {
    "type": "function",
    "name": "get_weather",
    "description": "The weather in a city",
    "parameters": {
        "type": "object",
        "properties": {"city": {"type": "string"}},
        "required": ["city"],
        "additionalProperties": False,
    },
    "strict": True,
}


def client(key=TOKEN):
    return openai.OpenAI(api_key=key, base_url=URL + "/v1", max_retries=0)


def other_token():
    """A second client token, made through the admin API."""
    req = urllib.request.Request(
        URL + "/admin/tokens",
        data=json.dumps({"name": "responses-other"}).encode(),
        headers={"Authorization": f"Bearer {ADMIN}", "Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(req) as res:
        return json.load(res)["token"]


def test_plain_response():
    r = client().responses.create(model=MODEL, input="Tell me about rivers", instructions="Be brief.")
    assert r.object == "response" and r.id.startswith("resp_")
    assert r.status == "completed"
    assert len(r.output_text) > 20
    assert r.output[0].type == "message" and r.output[0].content[0].type == "output_text"
    assert r.usage.input_tokens > 0 and r.usage.output_tokens > 0
    assert r.usage.total_tokens == r.usage.input_tokens + r.usage.output_tokens
    assert r.usage.input_tokens_details.cached_tokens == 0


def test_streamed_response_is_the_typed_event_sequence():
    events = list(client().responses.create(model=MODEL, input="Tell me about lakes", stream=True))
    types = [e.type for e in events]
    assert types[:4] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
    ]
    assert types[-4:] == [
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]
    assert set(types[4:-4]) == {"response.output_text.delta"} and len(types) > 9
    assert [e.sequence_number for e in events] == list(range(len(events)))
    text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    done = events[-1].response
    assert done.status == "completed" and done.output_text == text
    assert done.usage.output_tokens > 0
    # The unary answer to the same input is the same text.
    assert client().responses.create(model=MODEL, input="Tell me about lakes").output_text == text


def test_stream_helper_collects_the_final_response():
    with client().responses.stream(model=MODEL, input="Tell me about seas") as stream:
        deltas = [e.delta for e in stream if e.type == "response.output_text.delta"]
        final = stream.get_final_response()
    assert final.output_text == "".join(deltas) and len(deltas) > 1


def test_function_call_round_trip_with_previous_response_id():
    c = client()
    first = c.responses.create(model=MODEL, input="Weather in Oslo?", tools=[WEATHER], tool_choice="required")
    calls = [o for o in first.output if o.type == "function_call"]
    assert len(calls) == 1 and calls[0].name == "get_weather"
    json.loads(calls[0].arguments)
    second = c.responses.create(
        model=MODEL,
        previous_response_id=first.id,
        tools=[WEATHER],
        input=[{"type": "function_call_output", "call_id": calls[0].call_id, "output": '{"temp_c": -3}'}],
    )
    assert second.status == "completed"
    assert second.previous_response_id == first.id
    assert second.output_text == 'The get_weather tool returned {"temp_c":-3}.'


def test_function_call_round_trip_with_the_whole_conversation_sent_back():
    c = client()
    question = [{"role": "user", "content": "Weather in Oslo?"}]
    first = c.responses.create(model=MODEL, input=question, tools=[WEATHER], tool_choice="required", store=False)
    call = next(o for o in first.output if o.type == "function_call")
    history = question + [o.model_dump(exclude_none=True) for o in first.output]
    history.append({"type": "function_call_output", "call_id": call.call_id, "output": "sunny"})
    second = c.responses.create(model=MODEL, input=history, tools=[WEATHER], store=False)
    assert second.output_text == 'The get_weather tool returned {"result":"sunny"}.'


def test_retrieve_and_delete_reach_only_the_owner():
    c = client()
    r = c.responses.create(model=MODEL, input="Remember rivers")
    assert c.responses.retrieve(r.id).output_text == r.output_text
    stranger = client(other_token())
    with pytest.raises(openai.NotFoundError):
        stranger.responses.retrieve(r.id)
    with pytest.raises(openai.NotFoundError):
        stranger.responses.create(model=MODEL, input="go on", previous_response_id=r.id)
    c.responses.delete(r.id)
    with pytest.raises(openai.NotFoundError):
        c.responses.retrieve(r.id)
