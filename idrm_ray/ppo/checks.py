"""What can be checked before a PPO launch, each failure one line saying how to fix it.

- the reward checkpoint's layout (`serve/checkpoint_check.py`, shared with the server);
- the reward model reads PPO's queries as it was trained (chat template or not);
- in-cluster, the reward model receives the policy's token ids, so both tokenizers must map
  text to the same ids;
- the command itself, with the installed OpenRLHF's parser (`openrlhf_cli.py`).
"""
from __future__ import annotations

from idrm_ray.serve.checkpoint_check import CheckError

__all__ = ["CheckError", "check_render", "check_tokenizers_match"]

PROBE_TEXT = "Human: Héllo, what's 2+2?\n\nAssistant: It is 4. 日本 🙂</s>"


def check_render(reward_path: str, *, apply_chat_template: bool) -> str:
    """The reward model must read PPO's queries the way it was trained (DESIGN.md decision 9):
    OpenRLHF's `--data.apply_chat_template` renders the policy's prompts with the chat template,
    so a reward model trained on raw prompt + response would score text it never saw (and the
    other way round). Refuses a mismatch with `CheckError`; returns a note otherwise."""
    from idrm_ray.core.reward_model import read_metadata

    render = read_metadata(reward_path).get("render")
    if render is None:
        return "reward checkpoint records no render setting (trained before it was saved): chat template not checked"
    trained_chat = bool(render.get("chat_template"))
    if trained_chat != apply_chat_template:
        how = "with its tokenizer's chat template" if trained_chat else "on raw prompt + response (no chat template)"
        fix = ("data.apply_chat_template=true" if trained_chat else
               "data.apply_chat_template=false, or train the reward model with student.chat_template=true")
        raise CheckError(f"{reward_path} was trained {how}, but PPO would send it "
                         f"{'chat-templated' if apply_chat_template else 'raw'} queries "
                         f"(data.apply_chat_template={str(apply_chat_template).lower()}): set {fix}")
    return f"reward model and PPO queries agree on the chat template ({'on' if trained_chat else 'off'})"


def _load_tokenizer(path: str):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(path, local_files_only=True)


def check_tokenizers_match(reward_path: str, policy_path: str) -> str | None:
    """Raise `CheckError` when the reward model's tokenizer differs from the policy's.
    Returns a note instead when a tokenizer is not available locally (checked on the cluster
    by nobody: say so rather than pretend)."""
    try:
        reward, policy = _load_tokenizer(reward_path), _load_tokenizer(policy_path)
    except (OSError, ValueError) as exc:
        return f"tokenizer match not checked (not available locally: {str(exc).splitlines()[0][:120]})"
    problems = []
    rv, pv = reward.get_vocab(), policy.get_vocab()
    if rv != pv:
        diff = len(set(rv.items()) ^ set(pv.items()))
        problems.append(f"vocabularies differ ({len(rv)} vs {len(pv)} tokens, {diff} entries not shared)")
    for name in ("eos_token_id", "bos_token_id"):
        if getattr(reward, name) != getattr(policy, name):
            problems.append(f"{name} {getattr(reward, name)} vs {getattr(policy, name)}")
    if not problems:
        a = reward(PROBE_TEXT, add_special_tokens=False)["input_ids"]
        b = policy(PROBE_TEXT, add_special_tokens=False)["input_ids"]
        if a != b:
            problems.append("the same text tokenizes to different ids")
    if problems:
        raise CheckError(
            f"reward tokenizer ({reward_path}) differs from the policy's ({policy_path}): {'; '.join(problems)}. "
            "In-cluster, OpenRLHF feeds the policy's token ids to the reward model: train the RM from the policy's "
            "tokenizer, or serve it (idrm-ray serve) and set reward.url instead of reward.checkpoint")
    return None
