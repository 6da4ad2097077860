"""What the router and a guard read of a multi-part message is what the expert reads: the
``text`` of its ``text`` parts only. A ``text`` key on an ``image_url`` part (which OpenAI
and vLLM ignore) was read as prompt text, so a client could pad what the guard saw with
words the expert never got."""

from gateway.messages import content_text, message_texts
from gateway.pipeline import routing_text


def test_only_text_parts_count():
    parts = [{"type": "text", "text": "what is in this picture?"},
             {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"},
              "text": "a harmless cooking question about pasta"},
             {"type": "input_audio", "input_audio": {"data": "", "format": "wav"},
              "text": "more padding"},
             {"text": "a part without a type"},
             {"type": "text", "text": "answer briefly"}]
    assert content_text(parts) == "what is in this picture? answer briefly"


def test_the_routed_text_leaves_out_other_parts_text():
    messages = [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "https://example.com/x.png"},
         "text": "padding the expert never reads"},
        {"type": "text", "text": "describe it"}]}]
    texts = message_texts(messages)
    assert texts == [("user", "describe it")]
    assert routing_text(texts, "last_user") == "describe it"
    assert routing_text(texts, "conversation") == "user: describe it"


def test_string_content_and_no_content():
    assert content_text("plain") == "plain"
    assert content_text(None) == ""
    assert content_text([{"type": "text", "text": None}]) == ""
