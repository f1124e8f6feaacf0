"""The student's chat template around one (prompt, response) half (issue 13 §2, [D]).

With `student.chat_template` the student reads exactly what OpenRLHF's reward dataset feeds
its reward model with `--apply_chat_template` (`openrlhf/datasets/reward_dataset.py`,
`preprocess_data` then `__getitem__`, read not copied):

    prompt = apply_chat_template([user], add_generation_prompt=True)
    full   = prompt + apply_chat_template([user, assistant])[len(prompt):]
    text   = full.rstrip("\\n"), plus " " + eos_token unless it already ends with eos_token,
    tokenized with add_special_tokens=False (the template writes BOS where the model wants one).

So for SmolLM2 the trailing "\\n" after the final `<|im_end|>` is dropped and no second EOS is
added: the reward is read at the template's own `<|im_end|>` (= EOS, id 2). A default system
prompt the template adds (SmolLM2's does) is template text like any other.

`chat_render` splits that text into template and content: prefix + prompt' + separator +
response' + suffix, where prompt'/response' are the raw strings as the template renders them.
Rule for templates that alter the content: only whitespace at the ends of a turn may be
dropped (Llama-3's `| trim`, or the rstrip above eating a response's trailing newlines); the
spans of the raw strings kept are recorded, the dropped characters belong to no student token,
and the teacher still reads the raw text. Any other change raises ValueError.
"""
from __future__ import annotations

from typing import NamedTuple

# Private-use code points: no template escapes, trims or matches them.
_PROMPT_MARK, _RESPONSE_MARK = "\ue000idrm-prompt\ue001", "\ue002idrm-response\ue003"


class ChatRender(NamedTuple):
    """One half as the student reads it: `text(prompt, response)` = prefix +
    prompt[slice] + separator + response[slice] + suffix."""

    prefix: str
    separator: str
    suffix: str
    prompt_span: tuple[int, int]  # [start, end) of the raw prompt the text holds
    response_span: tuple[int, int]  # [start, end) of the raw response the text holds

    def text(self, prompt: str, response: str) -> str:
        (p0, p1), (r0, r1) = self.prompt_span, self.response_span
        return self.prefix + prompt[p0:p1] + self.separator + response[r0:r1] + self.suffix


def has_chat_template(tokenizer) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


def _render(tokenizer, prompt: str, response: str | None) -> str:
    turns = [{"role": "user", "content": prompt}]
    if response is None:
        return tokenizer.apply_chat_template(turns, tokenize=False, add_generation_prompt=True)
    return tokenizer.apply_chat_template(turns + [{"role": "assistant", "content": response}], tokenize=False)


def chat_parts(tokenizer) -> tuple[str, str, str]:
    """(prefix, separator, suffix) of the template around marker contents, before OpenRLHF's
    rstrip/EOS rule; one render, reused for every example of a batch."""
    if not has_chat_template(tokenizer):
        raise ValueError(
            f"{type(tokenizer).__name__} ({getattr(tokenizer, 'name_or_path', '?')}) has no chat template: "
            "use template=None or a (prefix, separator, suffix) tuple"
        )
    full = _render(tokenizer, _PROMPT_MARK, _RESPONSE_MARK)
    i, j = full.find(_PROMPT_MARK), full.find(_RESPONSE_MARK)
    if i < 0 or j < i or full.count(_PROMPT_MARK) != 1 or full.count(_RESPONSE_MARK) != 1:
        raise ValueError(
            "the chat template changes the prompt or response, or does not render the user and assistant turns "
            f"once each and in order, so template and content cannot be told apart: {full!r:.300}"
        )
    return full[:i], full[i + len(_PROMPT_MARK) : j], full[j + len(_RESPONSE_MARK) :]


def _ends_stripped(raw: str, shown: str) -> tuple[int, int] | None:
    """The [start, end) span of `raw` equal to `shown` if only whitespace at the ends differs."""
    if shown == raw:
        return 0, len(raw)
    start = len(raw) - len(raw.lstrip())
    for s in (start, 0):
        if raw[s:].startswith(shown) and not raw[s + len(shown) :].strip() and not raw[:s].strip():
            return s, s + len(shown)
    return None


def _split(full: str, parts: tuple[str, str, str], prompt: str, response: str):
    prefix, separator, suffix = parts
    if not (full.startswith(prefix) and full.endswith(suffix)):
        return None
    middle = full[len(prefix) : len(full) - len(suffix)]  # prompt' + separator + response'
    # The separator (template text) is found where it leaves whitespace-trimmed versions
    # of both contents on either side; the exact split is tried first.
    for at in [len(prompt)] + [k for k in range(len(middle)) if middle.startswith(separator, k)]:
        if not middle.startswith(separator, at):
            continue
        p = _ends_stripped(prompt, middle[:at])
        r = _ends_stripped(response, middle[at + len(separator) :])
        if p is not None and r is not None:
            return p, r
    return None


def chat_render(tokenizer, prompt: str, response: str, *, parts: tuple[str, str, str] | None = None) -> ChatRender:
    """The student's text of one half under the tokenizer's chat template, as OpenRLHF's
    reward dataset builds it (module docstring). `parts`: `chat_parts(tokenizer)`, passed to
    skip re-deriving it per example. Raises ValueError when the template changes the content
    beyond trimming whitespace, or renders the prompt differently once the response follows."""
    parts = parts or chat_parts(tokenizer)
    full, gen = _render(tokenizer, prompt, response), _render(tokenizer, prompt, None)
    if not full.startswith(gen):
        # OpenRLHF slices full[len(gen):]: its text would glue two inconsistent renders.
        raise ValueError(
            f"the chat template renders the user turn differently once an assistant turn follows: {gen!r:.200}"
        )
    spans = _split(full, parts, prompt, response)
    if spans is None:
        raise ValueError(
            "the chat template changes the prompt or response beyond trimming whitespace at the ends, so its "
            f"characters cannot be mapped back to the raw text: {full!r:.300}"
        )
    (p0, p1), (r0, r1) = spans
    text = full.rstrip("\n")  # OpenRLHF's rule; may reach into the response's trailing newlines
    content_end = len(parts[0]) + (p1 - p0) + len(parts[1]) + (r1 - r0)
    if len(text) < content_end:
        r1 -= content_end - len(text)
        if r1 < r0:
            raise ValueError(f"the chat template ends with newlines only and the response is empty: {full!r:.200}")
        content_end = len(text)
    suffix = text[content_end:]
    eos = tokenizer.eos_token
    if not eos:
        raise ValueError("the student tokenizer needs an EOS token: the reward is read there")
    if not text.endswith(eos):
        suffix += " " + eos  # OpenRLHF appends " " + eos_token
    return ChatRender(parts[0], parts[1], suffix, (p0, p1), (r0, r1))


def chat_layout(tokenizer, prompt: str, response: str) -> tuple[str, str, str]:
    """(prefix, separator, suffix) such that prefix + prompt + separator + response + suffix is
    exactly the text the student reads under its chat template (`chat_render`). Raises
    ValueError when the template trims this prompt or response (use `chat_render(...).text`)."""
    r = chat_render(tokenizer, prompt, response)
    if r.prompt_span != (0, len(prompt)) or r.response_span != (0, len(response)):
        raise ValueError(
            "the chat template trims whitespace at the ends of this prompt or response: "
            "use chat_render(tokenizer, prompt, response).text(prompt, response)"
        )
    return r.prefix, r.separator, r.suffix
