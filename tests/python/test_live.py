"""The google-genai SDK's Live API (`client.aio.live.connect`) through full_proxy (demo mode).

The SDK always opens the Live WebSocket as `wss://` when it has an API key: it rewrites the
scheme of `base_url` to `wss` (`BaseApiClient._websocket_base_url`), so it cannot reach a
plain-HTTP gateway directly. Deployed gateways sit behind TLS; here a small TLS-terminating
relay (a self-signed certificate for 127.0.0.1, trusted through `async_client_args["ssl"]`,
which the SDK uses for its WebSocket) stands in front of full_proxy, and the SDK is pointed at
it with `base_url` exactly as the other drivers point it at the gateway.
"""
import asyncio
import os
import shutil
import ssl
import subprocess
import tempfile
from urllib.parse import urlparse

import pytest
from google import genai
from google.genai import errors, types

URL = os.environ["GATEWAY_URL"]
TOKEN = os.environ["GATEWAY_TOKEN"]
MODEL = "gemini-live-2.5-flash-preview"
PROMPT = "Tell me about rivers"


def _certificate(tmp):
    cert, key = os.path.join(tmp, "cert.pem"), os.path.join(tmp, "key.pem")
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
         "-keyout", key, "-out", cert],
        check=True, capture_output=True,
    )
    return cert, key


async def _tls_relay(cert, key):
    """A TLS front for the gateway: decrypts and pipes bytes both ways."""
    gw = urlparse(URL)
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(cert, key)

    async def pipe(reader, writer):
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            writer.close()

    async def handle(c_reader, c_writer):
        u_reader, u_writer = await asyncio.open_connection(gw.hostname, gw.port)
        await asyncio.gather(pipe(c_reader, u_writer), pipe(u_reader, c_writer))

    return await asyncio.start_server(handle, "127.0.0.1", 0, ssl=server_ctx)


def _client(base_url, cert, key=TOKEN):
    client_ctx = ssl.create_default_context(cafile=cert)
    return genai.Client(
        api_key=key,
        http_options=types.HttpOptions(base_url=base_url, async_client_args={"ssl": client_ctx}),
    )


@pytest.fixture(scope="module")
def tls():
    if shutil.which("openssl") is None:
        pytest.skip("no openssl to make the TLS front's certificate")
    with tempfile.TemporaryDirectory() as tmp:
        yield _certificate(tmp)


def test_live_text_turn_through_the_gateway(tls):
    cert, key = tls

    async def run():
        relay = await _tls_relay(cert, key)
        port = relay.sockets[0].getsockname()[1]
        client = _client(f"https://127.0.0.1:{port}", cert)
        texts, usage = [], None
        async with client.aio.live.connect(model=MODEL, config={"response_modalities": ["TEXT"]}) as session:
            await session.send_client_content(
                turns={"role": "user", "parts": [{"text": PROMPT}]}, turn_complete=True
            )
            async for message in session.receive():
                if message.text:
                    texts.append(message.text)
                if message.usage_metadata:
                    usage = message.usage_metadata
                if message.server_content and message.server_content.turn_complete:
                    # The gateway relays the usageMetadata message right after turnComplete.
                    async for more in session.receive():
                        if more.usage_metadata:
                            usage = more.usage_metadata
                            break
                    break
        relay.close()
        return "".join(texts), usage

    text, usage = asyncio.run(run())
    # The demo upstream answers a prompt the same way on every route.
    rest = genai.Client(api_key=TOKEN, http_options=types.HttpOptions(base_url=URL))
    assert text == rest.models.generate_content(model="gemini-2.5-flash", contents=PROMPT).text
    assert usage is not None and usage.total_token_count > 0


def test_live_audio_turn_through_the_gateway(tls):
    """Half a second of 16 kHz PCM sent as realtime input; the answer is 24 kHz PCM."""
    cert, key = tls
    pcm_in = bytes(32004)  # 16-bit samples, a whole number of base64 groups

    async def run():
        relay = await _tls_relay(cert, key)
        port = relay.sockets[0].getsockname()[1]
        client = _client(f"https://127.0.0.1:{port}", cert)
        audio, mime, usage = bytearray(), None, None
        async with client.aio.live.connect(model=MODEL, config={"response_modalities": ["AUDIO"]}) as session:
            await session.send_realtime_input(
                audio=types.Blob(data=pcm_in, mime_type="audio/pcm;rate=16000")
            )
            async for message in session.receive():
                content = message.server_content
                if content and content.model_turn:
                    for part in content.model_turn.parts or []:
                        if part.inline_data:
                            mime = part.inline_data.mime_type
                            audio.extend(part.inline_data.data)
                if message.usage_metadata:
                    usage = message.usage_metadata
                if content and content.turn_complete:
                    async for more in session.receive():
                        if more.usage_metadata:
                            usage = more.usage_metadata
                            break
                    break
        relay.close()
        return bytes(audio), mime, usage

    audio, mime, usage = asyncio.run(run())
    assert mime == "audio/pcm;rate=24000"
    # 1.5 times the samples (16 kHz in, 24 kHz out), whole samples, every byte relayed intact.
    assert len(audio) == 48006 and audio == bytes(len(audio))
    assert usage is not None and usage.prompt_token_count > 0


def test_live_wrong_token_is_refused(tls):
    cert, key = tls

    async def run():
        relay = await _tls_relay(cert, key)
        port = relay.sockets[0].getsockname()[1]
        client = _client(f"https://127.0.0.1:{port}", cert, key="not-a-valid-token")
        try:
            async with client.aio.live.connect(model=MODEL, config={"response_modalities": ["TEXT"]}):
                pass
        finally:
            relay.close()

    # websockets raises InvalidStatus for the 401 answer to the handshake.
    with pytest.raises(Exception) as err:
        asyncio.run(run())
    assert "401" in str(err.value)
