"""The paper's Section 2 diagnostics on tiny models: stages, reward-token attention, the
stage analysis, progressive masking, the token view, and their plots."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from idrm_ray.core.reward_model import compute_rewards, load_reward_model, save_reward_model
from idrm_ray.core.tiny import build_tiny_student
from idrm_ray.core.types import PreferenceExample
from idrm_ray.data import bundled_path, load_preferences
from idrm_ray.eval import plots
from idrm_ray.eval.diagnostics import (
    masking_curve,
    reward_token_attention,
    stage_analysis,
    stage_fractions,
    stage_masks,
    stage_positions,
    token_view,
)
from idrm_ray.eval.fixtures import marker_reward_model
from idrm_ray.core.scoring import RewardScorer, encode_sequences, pad_batch, pair_outcomes


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def trained(student_tokenizer, tmp_path_factory):
    """A tiny student fitted with BT to 8 bundled pairs (12 steps, a fixed batch: cheap on a
    busy 2-core machine, and its loss surely falls), saved, plus its eager copy."""
    tok = student_tokenizer
    pairs, _ = load_preferences(bundled_path("pref_eval"), max_rows=16)
    seqs = encode_sequences(pairs, tok, max_len=80)
    model = build_tiny_student(tok, num_layers=2, seed=1)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    ids, mask = pad_batch([seqs[2 * i + k] for k in (0, 1) for i in range(8)], pad_id=tok.pad_token_id)
    losses = []
    for _ in range(12):
        r_w, r_l = compute_rewards(model, ids, mask).split(8)
        loss = -F.logsigmoid(r_w - r_l).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]  # it learned something
    path = save_reward_model(model.eval(), tok, tmp_path_factory.mktemp("diag") / "ckpt")
    eager = load_reward_model(path, attn_implementation="eager").eval()
    return {
        "path": path,
        "eager": eager,
        "scorer": RewardScorer(str(path), device="cpu", batch_size=8),
        "seqs": seqs[:32],
    }


def test_stage_positions_and_fractions():
    seq = np.array([1] + list(range(10, 35)))  # BOS + 25 tokens
    stages = stage_positions(seq, bos_id=1)
    assert [len(s) for s in stages] == [3, 3, 3, 3, 3, 2, 2, 2, 2, 2] and stages[0][0] == 1 and stages[-1][-1] == 25
    assert [len(s) for s in stage_positions(seq, bos_id=None)] == [3] * 6 + [2] * 4
    attn = np.random.default_rng(0).dirichlet(np.ones(26))
    fr = stage_fractions(attn, stages)
    assert fr.sum() == pytest.approx(1.0) and fr[0] == pytest.approx(attn[1:4].sum() / attn[1:].sum())
    assert [len(s) for s in stage_positions(np.array([1, 7, 8, 2]), bos_id=1)].count(0) == 7  # short: empty stages
    mask = stage_masks(seq, stages, 10)
    assert mask.tolist() == [1] + [0] * 24 + [1]  # BOS and the reward token stay visible


def test_attention_needs_eager(student_tokenizer):
    model = build_tiny_student(student_tokenizer)  # sdpa
    with pytest.raises(ValueError, match="eager"):
        reward_token_attention(model, [np.array([1, 5, 2])], pad_id=0)


def test_reward_token_attention_matches_output_attentions(trained):
    eager, seqs = trained["eager"], trained["seqs"][:5]
    attns, rewards = reward_token_attention(eager, seqs, pad_id=eager.config.pad_token_id, batch_size=2)
    assert np.allclose(rewards, trained["scorer"].score(seqs), atol=1e-4)
    for seq, attn in zip(seqs, attns):
        assert attn.shape == (len(seq),) and attn.sum() == pytest.approx(1.0, abs=1e-5)
        with torch.no_grad():
            out = eager.model(torch.as_tensor(seq)[None], output_attentions=True)
        ref = out.attentions[-1][0, :, -1, :].mean(0).numpy()  # top block, reward-token row, head mean
        assert np.allclose(attn, ref, atol=1e-5)


def test_uniform_attention_gives_stage_sizes(student_tokenizer):
    # The marker model's block-0 attention is uniform, but the top block reads the same
    # (zeroed) weights too: W_Q = W_K = 0 only in block 0, so check block 0's shape-free fact
    # on a model whose top block is block 0.
    model = marker_reward_model(student_tokenizer, plus=[" robot"], minus=[" doctor"])
    del model.model.layers[1:]
    model.config.num_hidden_layers = 1
    model.config._attn_implementation = "eager"
    seq = encode_sequences(
        [PreferenceExample("Who helps the team?", " The robot helps.", " No.")], student_tokenizer, max_len=64
    )[0]
    (attn,), _ = reward_token_attention(model, [seq], pad_id=0)
    assert np.allclose(attn, 1 / len(seq))
    stages = stage_positions(seq, bos_id=student_tokenizer.bos_token_id)
    assert np.allclose(stage_fractions(attn, stages), [len(s) / (len(seq) - 1) for s in stages])


def test_masking_everything_is_chance(trained, student_tokenizer):
    curve = masking_curve(trained["scorer"], trained["seqs"], bos_id=student_tokenizer.bos_token_id)
    assert curve["masked_fraction"][0] == 0.0 and curve["masked_fraction"][-1] == 1.0 and len(curve["accuracy"]) == 11
    assert curve["accuracy"][-1] == 0.5 and curve["ties"][-1] == 16
    base = trained["scorer"].score(trained["seqs"])
    assert curve["accuracy"][0] == pair_outcomes(base[0::2], base[1::2]).mean()


def test_masking_marker_model_exact(student_tokenizer):
    scorer = RewardScorer(
        model=marker_reward_model(student_tokenizer, plus=[" robot"], minus=[" doctor"]), device="cpu"
    )
    ex = [
        PreferenceExample(
            "\n\nHuman: Who helps the team today?\n\nAssistant:", " The robot helps.", " The doctor helps."
        )
    ] * 3
    curve = masking_curve(
        scorer, encode_sequences(ex, student_tokenizer, max_len=64), bos_id=student_tokenizer.bos_token_id, tie_rel=0.0
    )
    # markers sit in the last stages: accuracy 1 until they are masked, then exact ties
    assert curve["accuracy"][0] == 1.0 and curve["accuracy"][-1] == 0.5 and set(curve["accuracy"]) == {1.0, 0.5}


def test_stage_analysis_and_plots(trained, student_tokenizer, tmp_path):
    eager, seqs = trained["eager"], trained["seqs"]
    attns, rewards = reward_token_attention(eager, seqs, pad_id=eager.config.pad_token_id)
    outcomes = pair_outcomes(rewards[0::2], rewards[1::2])
    st = stage_analysis(attns, seqs, outcomes, bos_id=student_tokenizer.bos_token_id)
    assert st["correct"]["pairs"] + st["incorrect"]["pairs"] + st["ties"] == 16
    for group in ("correct", "incorrect"):
        if st[group]["pairs"]:
            assert sum(st[group]["fraction"]) == pytest.approx(1.0) and st[group]["cumulative"][-1] == pytest.approx(
                1.0
            )
    view = token_view(student_tokenizer, seqs[0], attns[0], seqs[1], attns[1], bos_id=student_tokenizer.bos_token_id)
    staged = view["chosen"]["normalized"][1:] + view["rejected"]["normalized"][1:]
    assert max(staged) == pytest.approx(1.0) and min(staged) >= 0.0 and len(view["chosen"]["tokens"]) == len(seqs[0])
    plots.plot_stages(tmp_path / "stages.png", st, title="t")
    plots.plot_masking(tmp_path / "masking.png", {"m": {"masked_fraction": [0, 1], "accuracy": [0.8, 0.5]}}, title="t")
    plots.token_view_html(tmp_path / "tv.html", view, title="t <pair>")
    plots.plot_token_view(tmp_path / "tv.png", view, title="t")
    for name in ("stages.png", "masking.png", "tv.png"):
        assert (tmp_path / name).read_bytes()[:4] == b"\x89PNG"
    page = (tmp_path / "tv.html").read_text()
    assert (
        "linear-gradient" in page
        and "t &lt;pair&gt;" in page
        and page.count('class="t"') == len(seqs[0]) + len(seqs[1])
    )
