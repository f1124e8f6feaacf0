"""`idrm-ray eval` reads a checkpoint the way it was trained (DESIGN.md decision 9): the render
recorded in its `idrm_meta.json` (chat template or not) decides how prompt and response become
text, a contradicting --template is refused, and RewardBench-style prompts are not wrapped as an
HH turn when the chat template makes the turns."""
from __future__ import annotations

import copy

import pytest

from idrm_ray.core import tiny
from idrm_ray.core.reward_model import save_reward_model
from idrm_ray.eval.model import EvalError, EvalOptions, LoadedModel
from idrm_ray.eval.runner import _prompt_render

CHAT = "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}{% endfor %}"


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory, student_tokenizer):
    tok = copy.deepcopy(student_tokenizer)
    tok.chat_template = CHAT
    model = tiny.build_tiny_student(tok, num_layers=1)
    root = tmp_path_factory.mktemp("render")
    out = {}
    for name, chat in (("chat", True), ("raw", False)):
        render = {"chat_template": chat, "template": ["", "", ""], "max_len": 48}
        out[name] = str(save_reward_model(model, tok, root / name, metadata={"render": render}))
    out["unrecorded"] = str(save_reward_model(model, tok, root / "unrecorded"))
    return out


def test_the_recorded_render_decides(checkpoints, student_tokenizer):
    chat = LoadedModel(checkpoints["chat"], EvalOptions(checkpoint=checkpoints["chat"], data=("x",)))
    assert chat.template == "chat" and chat.max_len == 48
    raw = LoadedModel(checkpoints["raw"], EvalOptions(checkpoint=checkpoints["raw"], data=("x",)))
    assert raw.template is None
    from idrm_ray.core.types import PreferenceExample

    seqs, _ = chat.encode(type("S", (), {"examples": [PreferenceExample("Hi?", " Yes.", " No.")]})())
    text = student_tokenizer.decode(seqs[0])
    assert "user" in text and "assistant" in text  # the template's turns are in the scored text


def test_a_contradicting_template_is_refused(checkpoints):
    with pytest.raises(EvalError, match="trained on chat-templated text"):
        LoadedModel(checkpoints["chat"], EvalOptions(checkpoint=checkpoints["chat"], data=("x",),
                                                     template=("A:", "B:", "")))
    with pytest.raises(EvalError, match="trained on raw prompt"):
        LoadedModel(checkpoints["raw"], EvalOptions(checkpoint=checkpoints["raw"], data=("x",), template="chat"))
    # A checkpoint from elsewhere records nothing: --template chat is the user's call.
    forced = LoadedModel(checkpoints["unrecorded"], EvalOptions(checkpoint=checkpoints["unrecorded"], data=("x",),
                                                                template="chat"))
    assert forced.template == "chat"


def test_benchmark_prompts_follow_the_render(checkpoints):
    assert _prompt_render(EvalOptions(checkpoint=checkpoints["chat"], data=("x",))) == "raw"
    assert _prompt_render(EvalOptions(checkpoint=checkpoints["raw"], data=("x",))) == "hh"
    assert _prompt_render(EvalOptions(checkpoint=checkpoints["unrecorded"], data=("x",), template="chat")) == "raw"
    assert _prompt_render(EvalOptions(checkpoint=checkpoints["raw"], data=("x",), render="raw")) == "raw"
