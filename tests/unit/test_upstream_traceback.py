"""An upstream's error message reaches the client without the server's stack trace
(:func:`gateway.upstreams.error_body`): llama-cpp-python puts its frames into the message of a
500 (``File ".../llama_cpp/server/app.py", line 376, in create_chat_completion``)."""

from __future__ import annotations

import orjson

from gateway.upstreams import error_body

BASE = "http://127.0.0.1:8101/v1"

#: what llama-cpp-python 0.3 answered for response_format json_schema (a 500)
LLAMA_VALIDATION = (
    "1 validation error:\n  {'type': 'literal_error', 'loc': ('body', 'response_format', "
    "'type'), 'msg': \"Input should be 'text' or 'json_object'\", 'input': 'json_schema'}\n\n"
    "  File \"/srv/venv/lib/python3.11/site-packages/llama_cpp/server/app.py\", line 376, "
    "in create_chat_completion\n    POST /v1/chat/completions")

PYTHON_TRACEBACK = (
    "Traceback (most recent call last):\n"
    "  File \"/srv/venv/lib/python3.11/site-packages/llama_cpp/llama.py\", line 1187, in "
    "_create_completion\n    tokens = self.tokenize(prompt)\n             ^^^^^^^^^^^^^\n"
    "  File \"/srv/venv/lib/python3.11/site-packages/llama_cpp/llama.py\", line 612, in "
    "tokenize\n    return self.tokenizer_.tokenize(text, add_bos, special)\n"
    "ValueError: Requested tokens (5000) exceed context window of 2048")


def _message(raw: bytes, status: int = 500) -> str:
    msg = orjson.loads(error_body(raw, status, "smollm2", BASE))["error"]["message"]
    assert isinstance(msg, str)
    return msg


def test_an_upstream_message_loses_its_traceback_frames_and_keeps_the_error() -> None:
    msg = _message(orjson.dumps({"error": {"message": LLAMA_VALIDATION,
                                           "type": "internal_server_error"}}))
    assert 'File "' not in msg and "llama_cpp" not in msg and "line 376" not in msg
    assert "POST /v1/chat/completions" not in msg
    assert msg.startswith("1 validation error:")
    assert "Input should be 'text' or 'json_object'" in msg
    assert not msg.endswith("\n")


def test_a_python_traceback_keeps_only_the_exception_line() -> None:
    for raw in (orjson.dumps({"error": {"message": PYTHON_TRACEBACK}}),
                orjson.dumps({"object": "error", "message": PYTHON_TRACEBACK}),
                orjson.dumps({"error": PYTHON_TRACEBACK}),
                PYTHON_TRACEBACK.encode()):
        msg = _message(raw)
        assert "Traceback" not in msg and 'File "' not in msg and "tokenize(" not in msg
        assert "^^^" not in msg
        assert msg.endswith("ValueError: Requested tokens (5000) exceed context window of 2048")


def test_a_chained_traceback_keeps_each_exception_line() -> None:
    chained = (PYTHON_TRACEBACK + "\n\nDuring handling of the above exception, another "
               "exception occurred:\n\n" + PYTHON_TRACEBACK.replace(
                   "ValueError: Requested tokens (5000) exceed context window of 2048",
                   "RuntimeError: generation failed"))
    msg = _message(orjson.dumps({"error": {"message": chained}}))
    assert [line for line in msg.splitlines() if line] == [
        "ValueError: Requested tokens (5000) exceed context window of 2048",
        "RuntimeError: generation failed"]


def test_a_message_without_a_traceback_is_unchanged() -> None:
    text = "This model's maximum context length is 2048 tokens.\n  Reduce the prompt."
    assert _message(orjson.dumps({"error": {"message": text}}), 400) == text


def test_a_litellm_providers_traceback_reaches_no_client() -> None:
    # LiteLLM quotes the provider's answer in its exception: the same frames, in another path
    from gateway.config import ExpertConfig
    from gateway.upstreams import _litellm_failure

    class ProviderError(Exception):
        status_code = 500

    msg = ('OpenAIException - Traceback (most recent call last):\n'
           '  File "/srv/llama_cpp/server/app.py", line 376, in create\n'
           '    raise ValueError(x)\n'
           "ValueError: can only concatenate str (not \"list\") to str")
    expert = ExpertConfig(name="lit", kind="litellm", model="openai/x")
    f = _litellm_failure(expert, ProviderError(msg), 5.0)
    assert f.body is not None
    text = orjson.loads(f.body)["error"]["message"]
    assert "File " not in text and "line 376" not in text and "raise ValueError" not in text
    assert "can only concatenate str" in text
