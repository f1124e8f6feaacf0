"""The study probe's unit bookkeeping (idrm_ray.eval.study_probe) on a hand-made early/* pair:
which units are the decisive fact, the other facts, the cue, and the attention shares."""
import re

import numpy as np
import pytest

from idrm_ray.eval.study_probe import cue_units, fact_share, fact_units, main, token_share

PROMPT = ("\n\nHuman: Facts: A dog likes the ball. The cat reads a book.\n\nAssistant: Got it."
          "\n\nHuman: What does the cat read?\n\nAssistant:")
CHOSEN = " The cat reads a book. Tag: blue. Bye."


def spans(text):
    """Word units with their leading space, as common_units makes them."""
    return np.array([(m.start(), m.end()) for m in re.finditer(r" ?[\w']+|[^\w\s]", text)])


def words(text, sp, units):
    return [text[a:b].strip() for a, b in sp[units]]


def test_fact_and_cue_units():
    text = PROMPT + CHOSEN
    sp = spans(text)
    target, others = fact_units(sp, PROMPT)
    assert words(text, sp, target) == ["The", "cat", "reads", "a", "book"]
    assert [words(text, sp, u) for u in others] == [["A", "dog", "likes", "the", "ball"]]
    assert words(text, sp, cue_units(sp, text, len(PROMPT))) == ["Tag", ":", "blue"]


def test_shares():
    ww = np.zeros((6, 6))
    ww[4, [0, 1]] = 0.3  # query 4 -> target units 0, 1 (0.3 each)
    ww[4, [2, 3]] = 0.1  # -> the other fact's units 2, 3
    assert fact_share(ww, np.array([4]), [0, 1], [[2, 3]]) == pytest.approx(0.75)
    assert fact_share(ww, np.array([]), [0, 1], [[2, 3]]) is None
    attn = np.array([0.5, 0.2, 0.2, 0.1])
    assert token_share(attn, np.array([-1, 0, 0, 3]), [0]) == pytest.approx(0.4)
    assert token_share(attn, np.array([-1, 0, 0, 3]), []) == 0.0


@pytest.mark.parametrize("argv", [["--eval", "e.jsonl"], ["--teacher-only", "--eval", "e.jsonl"],
                                  ["runs/c", "--teacher-only", "--teacher", "t", "--eval", "e.jsonl"]])
def test_cli_needs_a_compare_dir_or_a_teacher_only_teacher(argv):
    with pytest.raises(SystemExit) as err:
        main(argv)
    assert err.value.code == 2
