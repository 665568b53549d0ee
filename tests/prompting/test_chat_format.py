"""Chat prompts are rendered the way the model was trained: its own template, or Gemma's,
with tools and tool turns in the shape the template expects."""

from __future__ import annotations

import json
from typing import Any

import pytest

from moonflower.errors import InvalidRequest
from moonflower.generation import GenerationRequest, Message, Tool, ToolCall, ToolChoice
from moonflower.model_files import resolve_model
from moonflower.prompting.chat_format import (
    ChatTemplateMissing,
    ChatTemplateRejected,
    GemmaTurnFormat,
    JinjaChatFormat,
    NoChatFormat,
    chat_format_for,
    opens_reasoning,
)
from moonflower.prompting.tool_prompt import as_plain_turns, offered_tools, tool_description

CONVERSATIONS = [
    (Message("user", "Hello!"),),
    (Message("system", "You are terse."), Message("user", "Name a colour.")),
    (
        Message("system", "Answer in French."),
        Message("user", "Hi"),
        Message("assistant", "Bonjour !"),
        Message("user", "  How are you? 🌍 \n"),
    ),
]


def test_gemma_puts_the_system_prompt_into_the_first_user_turn() -> None:
    rendered = GemmaTurnFormat().render(
        [
            Message("system", "Be brief."),
            Message("user", "Hi "),
            Message("assistant", "Hello."),
            Message("user", "Bye"),
        ]
    )
    assert rendered == (
        "<start_of_turn>user\nBe brief.\n\nHi<end_of_turn>\n"
        "<start_of_turn>model\nHello.<end_of_turn>\n"
        "<start_of_turn>user\nBye<end_of_turn>\n"
        "<start_of_turn>model\n"
    )


def test_gemma_without_a_system_prompt() -> None:
    assert GemmaTurnFormat().render([Message("user", "Hi")]) == (
        "<start_of_turn>user\nHi<end_of_turn>\n<start_of_turn>model\n"
    )


def test_gemma_with_only_a_system_prompt_still_sends_it() -> None:
    assert GemmaTurnFormat().render([Message("system", "Say hello.")]) == (
        "<start_of_turn>user\nSay hello.<end_of_turn>\n<start_of_turn>model\n"
    )


def test_a_late_system_message_becomes_a_user_turn() -> None:
    rendered = GemmaTurnFormat().render([Message("user", "a"), Message("system", "b")])
    assert "<start_of_turn>user\nb<end_of_turn>\n" in rendered


def test_the_models_own_template_wins() -> None:
    chosen = chat_format_for(
        {"tokenizer.chat_template": "x", "general.architecture": "gemma3"},
        bos_token="<s>",
        eos_token="</s>",
    )
    assert isinstance(chosen, JinjaChatFormat)


def test_gemma_without_a_template_gets_gemma_turns() -> None:
    chosen = chat_format_for({"general.architecture": "gemma3"}, bos_token="", eos_token="")
    assert isinstance(chosen, GemmaTurnFormat)


def test_other_models_without_a_template_refuse_chats_clearly() -> None:
    chosen = chat_format_for({"general.architecture": "llama"}, bos_token="", eos_token="")
    assert isinstance(chosen, NoChatFormat)
    with pytest.raises(ChatTemplateMissing, match="no chat template") as caught:
        chosen.render([Message("user", "hi")])
    assert isinstance(caught.value, InvalidRequest)
    assert caught.value.param == "messages"


def test_a_template_that_does_not_compile_refuses_chats() -> None:
    chosen = chat_format_for({"tokenizer.chat_template": "{% for %}"}, bos_token="", eos_token="")
    with pytest.raises(ChatTemplateMissing, match="not valid Jinja"):
        chosen.render([Message("user", "hi")])


def test_raise_exception_in_a_template_is_a_rejection_with_its_message() -> None:
    template = (
        "{% if messages[0]['role'] != 'user' %}{{ raise_exception('user first') }}{% endif %}"
    )
    chat = JinjaChatFormat(template, bos_token="", eos_token="")
    with pytest.raises(ChatTemplateRejected, match="user first"):
        chat.render([Message("assistant", "secret words")])


def test_template_errors_never_quote_message_content() -> None:
    chat = JinjaChatFormat("{{ messages[0]['content'] + 1 }}", bos_token="", eos_token="")
    with pytest.raises(ChatTemplateRejected) as caught:
        chat.render([Message("user", "secret words")])
    assert "secret" not in caught.value.message


def test_templates_get_tokens_tojson_loopcontrols_and_generation_tags() -> None:
    template = (
        "{{ bos_token }}{% for m in messages %}{% if loop.index > 1 %}{% break %}{% endif %}"
        "{% generation %}{{ m | tojson }}{% endgeneration %}{% endfor %}"
        "{% if add_generation_prompt %}{{ eos_token }}{% endif %}"
    )
    chat = JinjaChatFormat(template, bos_token="<s>", eos_token="</s>")
    rendered = chat.render([Message("user", "é <b>"), Message("user", "dropped")])
    assert rendered == '<s>{"role": "user", "content": "é <b>"}</s>'


@pytest.fixture(scope="module")
def smollm2_vocab() -> Any:
    """SmolLM2's tokenizer and metadata only (no weights), straight from llama-cpp-python."""
    from llama_cpp import Llama

    llama = Llama(str(resolve_model("default").path), vocab_only=True, verbose=False)
    yield llama
    llama.close()


@pytest.mark.slow
@pytest.mark.parametrize("messages", CONVERSATIONS)
def test_smollm2_template_renders_as_llama_cpp_python_renders_it(
    smollm2_vocab: Any, messages: tuple[Message, ...]
) -> None:
    from llama_cpp.llama_chat_format import Jinja2ChatFormatter

    template = smollm2_vocab.metadata["tokenizer.chat_template"]
    bos = smollm2_vocab._model.token_get_text(smollm2_vocab.token_bos())
    eos = smollm2_vocab._model.token_get_text(smollm2_vocab.token_eos())
    reference = Jinja2ChatFormatter(template=template, bos_token=bos, eos_token=eos)
    expected = reference(messages=[{"role": m.role, "content": m.content} for m in messages])
    ours = chat_format_for(smollm2_vocab.metadata, bos_token=bos, eos_token=eos)
    assert isinstance(ours, JinjaChatFormat)
    assert ours.render(messages) == expected.prompt
    assert ours.render(messages).endswith("<|im_start|>assistant\n")


# Tools and tool turns

WEATHER = Tool(
    "get_weather",
    "Weather in a city",
    {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
)
CALL = ToolCall("call_1", "get_weather", '{"city": "Paris"}')
TOOL_CONVERSATION = (
    Message("user", "Weather in Paris and Oslo?"),
    Message("assistant", "Checking.", tool_calls=(CALL, ToolCall("call_2", "get_weather", "{}"))),
    Message("tool", "22 C", tool_call_id="call_1", name="get_weather"),
    Message("tool", "-3 C", tool_call_id="call_2", name="get_weather"),
)
CHATML = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
TOOL_AWARE = (
    "{% if tools %}TOOLS={{ tools | tojson }}\n{% endif %}"
    "{% for m in messages %}{{ m | tojson }}\n{% endfor %}"
)


def test_templates_without_tools_get_them_in_the_system_prompt() -> None:
    chat = JinjaChatFormat(CHATML, bos_token="", eos_token="")
    assert not chat.supports_tools
    rendered = chat.render([Message("system", "Be brief."), Message("user", "Hi")], [WEATHER])
    system = rendered.split("<|im_end|>")[0]
    assert system.startswith("<|im_start|>system\nBe brief.\n\n# Tools\n")
    assert json.dumps(tool_description(WEATHER)) in system
    assert (
        '<tool_call>{"name": "<function name>", "arguments": {<arguments>}}</tool_call>' in system
    )
    alone = chat.render([Message("user", "Hi")], [WEATHER])
    assert alone.startswith("<|im_start|>system\n# Tools\n")
    assert chat.render([Message("user", "Hi")]) == (
        "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    )


def test_tool_turns_become_text_any_template_accepts() -> None:
    rendered = JinjaChatFormat(CHATML, bos_token="", eos_token="").render(TOOL_CONVERSATION)
    assert rendered == (
        "<|im_start|>user\nWeather in Paris and Oslo?<|im_end|>\n"
        "<|im_start|>assistant\nChecking.\n"
        '<tool_call>{"name": "get_weather", "arguments": {"city": "Paris"}}</tool_call>\n'
        '<tool_call>{"name": "get_weather", "arguments": {}}</tool_call><|im_end|>\n'
        '<|im_start|>user\n<tool_response name="get_weather">\n22 C\n</tool_response>\n'
        '<tool_response name="get_weather">\n-3 C\n</tool_response><|im_end|>\n'
        "<|im_start|>assistant\n"
    )


def test_as_plain_turns_uses_only_the_three_plain_roles() -> None:
    turns = as_plain_turns([*TOOL_CONVERSATION, Message("user", "Thanks")], [WEATHER])
    assert [t.role for t in turns] == ["system", "user", "assistant", "user", "user"]
    assert all(not t.tool_calls for t in turns)


def test_tool_aware_templates_get_openai_shapes() -> None:
    chat = JinjaChatFormat(TOOL_AWARE, bos_token="", eos_token="")
    assert chat.supports_tools
    lines = chat.render(TOOL_CONVERSATION, [WEATHER]).splitlines()
    assert json.loads(lines[0].removeprefix("TOOLS=")) == [
        {"type": "function", "function": tool_description(WEATHER)}
    ]
    assistant, result = json.loads(lines[2]), json.loads(lines[3])
    assert assistant["tool_calls"][0] == {
        "id": "call_1",
        "type": "function",
        "function": {"name": "get_weather", "arguments": {"city": "Paris"}},
    }
    assert result == {
        "role": "tool",
        "content": "22 C",
        "tool_call_id": "call_1",
        "name": "get_weather",
    }
    assert not chat.render([Message("user", "Hi")]).startswith("TOOLS=")


def test_gemma_gets_tools_and_results_as_text_in_user_turns() -> None:
    rendered = GemmaTurnFormat().render(TOOL_CONVERSATION, [WEATHER])
    assert rendered.startswith("<start_of_turn>user\n# Tools\n")
    assert "<start_of_turn>model\nChecking.\n<tool_call>" in rendered
    assert '<start_of_turn>user\n<tool_response name="get_weather">\n22 C' in rendered
    assert rendered.endswith("</tool_response><end_of_turn>\n<start_of_turn>model\n")


def test_tool_choice_none_offers_no_tools() -> None:
    request = GenerationRequest(model="m", tools=(WEATHER,), tool_choice=ToolChoice("none"))
    assert offered_tools(request) == ()
    assert offered_tools(GenerationRequest(model="m", tools=(WEATHER,))) == (WEATHER,)


def test_a_prompt_that_opens_a_think_block_starts_in_reasoning() -> None:
    thinking = JinjaChatFormat(
        CHATML + "{% if add_generation_prompt %}<think>\n{% endif %}", bos_token="", eos_token=""
    )
    assert opens_reasoning(thinking.render([Message("user", "Hi")]))
    plain = JinjaChatFormat(CHATML, bos_token="", eos_token="")
    assert not opens_reasoning(plain.render([Message("user", "<think>")]))
    assert not opens_reasoning("<think>done</think>\n")
