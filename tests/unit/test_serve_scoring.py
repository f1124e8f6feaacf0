"""The reward server's scorer: queries read the way training read them (BOS once, EOS once,
the training window when too long), batching and padding change nothing, normalisation
uses the checkpoint's stored mean/std."""
from __future__ import annotations

import pytest
import torch

from idrm_ray.core import tiny
from idrm_ray.core.reward_model import compute_rewards, save_reward_model
from idrm_ray.core.truncation import keep_counts
from idrm_ray.serve.scoring import QueryTooLong, RewardScorer, Scores

TEXTS = ["Human: hello?\n\nAssistant: yes, 0123.", "The cat likes the ball quickly today.", "A dog sees."]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, student_tokenizer):
    model = tiny.build_tiny_student(student_tokenizer, num_layers=2)
    return save_reward_model(model, student_tokenizer, tmp_path_factory.mktemp("rm") / "model", mean=0.5, std=2.0)


@pytest.fixture(scope="module")
def scorer(checkpoint):
    return RewardScorer.from_checkpoint(checkpoint, max_len=64, batch_size=2)


def test_encoding_matches_training(scorer, student_tokenizer):
    # Training: tokenizer(text, add_special_tokens=True) then EOS appended (core/units.py).
    eos = student_tokenizer.eos_token_id
    expected = [student_tokenizer(t, add_special_tokens=True)["input_ids"] + [eos] for t in TEXTS]
    assert scorer.encode(TEXTS) == expected
    assert expected[0][0] == student_tokenizer.bos_token_id


def test_bos_and_eos_already_in_the_text_are_not_doubled(scorer):
    # vLLM responses stop at EOS and OpenRLHF decodes with special tokens kept.
    assert scorer.encode(["<s>" + t + "</s>" for t in TEXTS]) == scorer.encode(TEXTS)


def test_special_token_modes(checkpoint, student_tokenizer):
    bos, eos = student_tokenizer.bos_token_id, student_tokenizer.eos_token_id
    never = RewardScorer.from_checkpoint(checkpoint, special_tokens="never", append_eos=False)
    always = RewardScorer.from_checkpoint(checkpoint, special_tokens="always")
    plain = student_tokenizer(TEXTS[1], add_special_tokens=False)["input_ids"]
    assert never.encode([TEXTS[1]]) == [plain]
    assert always.encode(["<s>" + TEXTS[1]]) == [[bos, bos, *plain, eos]]


def test_long_query_is_cut_with_the_training_window(checkpoint, student_tokenizer):
    scorer = RewardScorer.from_checkpoint(checkpoint, max_len=16)
    prompt = "Human: " + " ".join(["the cat likes the ball"] * 4) + "\n\nAssistant:"
    response = " a dog sees the house again today with care"
    enc = student_tokenizer(prompt + response, add_special_tokens=False, return_offsets_mapping=True)
    ids, n_p = enc["input_ids"], sum(s < len(prompt) for s, _ in enc["offset_mapping"])
    n_r = len(ids) - n_p
    # 16 - BOS - EOS = 14 content tokens: p_keep = min(P, max(7, 14 - R)) = 7, r_keep = 7.
    assert n_p > 14 and n_r > 7 and keep_counts(n_p, n_r, 14) == (7, 7)
    (row,) = scorer.encode([prompt + response], [prompt])
    assert len(row) == 16 and row[0] == student_tokenizer.bos_token_id and row[-1] == student_tokenizer.eos_token_id
    assert row[1:8] == ids[n_p - 7 : n_p]  # the prompt's last tokens
    assert row[8:15] == ids[n_p : n_p + 7]  # the response's first tokens
    (no_split,) = scorer.encode([prompt + response])  # no prompt given: keep the end
    assert no_split[1:15] == ids[-14:]


def test_specials_beyond_max_len_are_refused(checkpoint):
    scorer = RewardScorer.from_checkpoint(checkpoint, max_len=8)
    with pytest.raises(QueryTooLong, match="max_len=8"):
        scorer.encode(["</s>" * 10 + "hello"])


def test_rewards_are_the_models_and_padding_changes_nothing(checkpoint, scorer):
    one_by_one = [scorer.score([t]).raw[0] for t in TEXTS]
    batched = scorer.score(TEXTS).raw  # batch_size 2: sorted, padded, two chunks
    torch.testing.assert_close(torch.tensor(batched), torch.tensor(one_by_one), atol=1e-5, rtol=1e-5)
    row = scorer.encode([TEXTS[0]])[0]
    with torch.no_grad():
        direct = compute_rewards(scorer.model, torch.tensor([row]), torch.ones(1, len(row), dtype=torch.long))
    assert one_by_one[0] == pytest.approx(direct.item(), abs=1e-6)
    assert scorer.score([]).rewards == []


def test_normalisation_uses_the_stored_mean_and_std(checkpoint, scorer):
    norm = RewardScorer.from_checkpoint(checkpoint, normalize_rewards=True)
    raw = scorer.score(TEXTS).raw
    out = norm.score(TEXTS)
    assert out.raw == pytest.approx(raw, abs=1e-5)
    assert out.rewards == pytest.approx([(r - 0.5) / 2.0 for r in raw], abs=1e-5)  # mean 0.5, std 2.0 saved above
    assert norm.info()["normalize"] and norm.info()["std"] == 2.0


def test_score_many_scores_requests_together_and_splits_back(scorer):
    groups = [scorer.encode(TEXTS[:2]), scorer.encode(TEXTS[2:])]
    parts = scorer.score_many(groups)
    assert [len(p.rewards) for p in parts] == [2, 1]
    assert parts[0].raw + parts[1].raw == pytest.approx(scorer.score(TEXTS).raw, abs=1e-5)
    assert Scores([1.0, 2.0, 3.0], [1.0, 2.0, 3.0]).split([1, 0, 2])[2].rewards == [2.0, 3.0]


def test_cli_scores_par_references_with_the_server_settings(checkpoint, scorer, tmp_path, capsys):
    from idrm_ray.cli import main
    from idrm_ray.serve.par_reward import read_references

    src = tmp_path / "refs.jsonl"
    src.write_text('{"prompt": "Human: hello?\\n\\nAssistant:", "references": [" yes.", " no."]}\n')
    out = tmp_path / "scored.jsonl"
    assert main(["serve", "--checkpoint", str(checkpoint), "--score-references", str(src), "--out", str(out),
                 "model.max_len=64"]) == 0
    rows = read_references(out)
    expected = scorer.score(["Human: hello?\n\nAssistant: yes.", "Human: hello?\n\nAssistant: no."]).rewards
    assert rows["Human: hello?\n\nAssistant:"]["ref_rewards"] == pytest.approx(expected, abs=1e-5)
    assert main(["serve", "--checkpoint", str(checkpoint), "--score-references", str(src)]) == 2
    assert "needs --out" in capsys.readouterr().err


def test_queries_rendered_unlike_training_are_refused(tmp_path, student_tokenizer):
    """The checkpoint records whether training used the chat template (DESIGN.md decision 9);
    the server refuses the other rendering (422 in the app) instead of scoring text the model
    never saw. A checkpoint with no record accepts both (older checkpoints)."""
    import copy

    from idrm_ray.serve.scoring import QueryNotAsTrained

    tok = copy.deepcopy(student_tokenizer)
    tok.chat_template = "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}{% endfor %}"
    model = tiny.build_tiny_student(tok, num_layers=1)
    templated, raw = "<|user|>Human: hi?<|assistant|> yes.", "Human: hi?\n\nAssistant: yes."
    for chat, ok, refused in ((True, templated, raw), (False, raw, templated)):
        path = save_reward_model(model, tok, tmp_path / f"rm_{chat}",
                                 metadata={"render": {"chat_template": chat, "template": ["", "", ""], "max_len": 64}})
        scorer = RewardScorer.from_checkpoint(path, max_len=64)
        assert scorer.chat_template is chat and scorer.info()["chat_template"] is chat
        assert len(scorer.score([ok]).raw) == 1
        with pytest.raises(QueryNotAsTrained, match="trained on raw" if not chat else "trained on chat-templated"):
            scorer.score([refused])
    unrecorded = RewardScorer.from_checkpoint(save_reward_model(model, tok, tmp_path / "rm_none"), max_len=64)
    assert unrecorded.chat_template is None and len(unrecorded.score([templated, raw]).raw) == 2
