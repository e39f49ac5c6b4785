"""The example's frontend, driven by OpenAI's official Python client (`pip install openai`).

Run by `deployment.rs` as `python3 openai_client.py <base url> <model>` against the toy engine
(a token per character), and by `real_model.rs` with a third argument, `real`, against the real
model (its chat template and tokenizer: "hello" as a chat is 31 tokens); exits non-zero with the
failed check, 77 when the `openai` package is not installed.
"""

import sys

try:
    import openai
except ImportError:
    print("the `openai` package is not installed (pip install openai)", file=sys.stderr)
    sys.exit(77)

base_url, model = sys.argv[1], sys.argv[2]
real = sys.argv[3:] == ["real"]
client = openai.OpenAI(base_url=base_url, api_key="unused", max_retries=0)


def check_usage(usage, what):
    assert usage is not None, f"{what}: no usage"
    assert usage.prompt_tokens and usage.prompt_tokens > 0, f"{what}: prompt_tokens {usage.prompt_tokens}"
    assert usage.completion_tokens and usage.completion_tokens > 0, f"{what}: {usage}"
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens, f"{what}: {usage}"


models = client.models.list()
assert [m.id for m in models.data] == [model], models

chat = client.chat.completions.create(
    model=model,
    messages=[{"role": "user", "content": "hello"}],
    max_tokens=5,
    extra_headers={"x-request-id": "openai-chat-1"},
)
assert chat._request_id == "openai-chat-1", chat._request_id
assert chat.choices[0].message.content, chat
assert chat.choices[0].finish_reason == "length", chat
check_usage(chat.usage, "chat")
assert chat.usage.completion_tokens == 5, chat.usage
# The toy: one token per byte; the real model: the chat template's 30 tokens around "hello".
assert chat.usage.prompt_tokens == (31 if real else len("hello".encode())), chat.usage

if real:
    answer = client.chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": "What is the capital of France?"}],
        max_tokens=24,
        temperature=0,
    )
    assert answer.choices[0].message.content == "The capital of France is Paris.", answer
    assert answer.choices[0].finish_reason == "stop", answer
    assert answer.usage.completion_tokens == 8, answer.usage

stream = client.chat.completions.create(
    model=model,
    messages=[{"role": "user", "content": "hello"}],
    max_tokens=4,
    stream=True,
    stream_options={"include_usage": True},
)
chunks = list(stream)
text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
assert len([c for c in chunks if c.choices]) == 4, chunks
assert text, chunks
assert chunks[-1].choices == [], chunks[-1]
check_usage(chunks[-1].usage, "streamed chat")
assert chunks[-1].usage.completion_tokens == 4, chunks[-1].usage

plain_stream = list(
    client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": "hi"}], max_tokens=2, stream=True
    )
)
assert all(c.choices for c in plain_stream), "no usage chunk unless asked"

completion = client.completions.create(model=model, prompt="once upon", max_tokens=3)
assert completion.choices[0].text, completion
check_usage(completion.usage, "completion")

try:
    client.chat.completions.create(model=model, messages=[], max_tokens=3)
    raise AssertionError("an empty prompt was accepted")
except openai.BadRequestError as error:
    assert error.status_code == 400, error
    assert error.request_id, "the 400 carries an x-request-id too"

print("openai client: models, chat, streamed chat with usage, completions, 400: ok")
