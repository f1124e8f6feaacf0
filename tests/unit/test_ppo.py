"""The PPO job: our config -> OpenRLHF's dotted `train_ppo_ray` flags, accepted by the
installed OpenRLHF's own parser and post-parse checks; the checks before launch (reward
checkpoint layout, reward tokenizer == policy tokenizer in-cluster); dry-run and submit.

The parser is OpenRLHF's, run from its source without importing vLLM/flash-attn
(idrm_ray/ppo/openrlhf_cli.py). Those tests skip when `openrlhf.cli.train_ppo_ray` is not
installed (`pip install --no-deps openrlhf==0.11.2 pylatexenc`, as .ci/setup.sh does).
"""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
from safetensors.torch import load_file, save_file

from idrm_ray.cli import main
from idrm_ray.config import ConfigError, load_config
from idrm_ray.core import tiny
from idrm_ray.core.reward_model import save_reward_model
from idrm_ray.ppo import openrlhf_cli
from idrm_ray.ppo.checks import check_tokenizers_match
from idrm_ray.ppo.command import REFERENCES_NAME, REWARD_FUNC_NAME, SECRET, build_ppo_launch
from idrm_ray.config.ppo import PPOJobConfig
from idrm_ray.ppo.job import preflight, run_ppo, submit_launch
from idrm_ray.serve import par_reward
from idrm_ray.serve.checkpoint_check import CheckError, check_reward_checkpoint

HAS_OPENRLHF = importlib.util.find_spec("openrlhf") is not None
needs_openrlhf = pytest.mark.skipif(
    not HAS_OPENRLHF, reason="`import openrlhf` fails: pip install --no-deps openrlhf==0.11.2 pylatexenc")
URL = "http://10.0.0.5:5000/get_reward"


@pytest.fixture(scope="module")
def dirs(tmp_path_factory, student_tokenizer):
    root = tmp_path_factory.mktemp("ppo")
    save_reward_model(tiny.build_tiny_student(student_tokenizer, num_layers=1), student_tokenizer, root / "rm")
    student_tokenizer.save_pretrained(root / "policy")  # same tokenizer: the check only reads tokenizers
    other = tiny.train_student_tokenizer(tiny.tiny_corpus(300, seed=1), vocab_size=320)
    other.save_pretrained(root / "other_policy")
    refs = root / "refs.jsonl"
    refs.write_text(json.dumps({"prompt": "Human: hi\n\nAssistant:", "references": [" hello"]}) + "\n")
    return root


def cfg_for(dirs, *overrides: str) -> PPOJobConfig:
    base = [f"policy.model_name_or_path={dirs / 'policy'}", "data.prompt_dataset=/data/prompts.jsonl"]
    return load_config(PPOJobConfig, None, [*base, *overrides])


def _flag(flags: list[str], name: str) -> str:
    return flags[flags.index(name) + 1]


def test_in_cluster_command(dirs):
    launch = build_ppo_launch(cfg_for(dirs, f"reward.checkpoint={dirs / 'rm'}"))
    assert launch.argv[:3] == ["python", "-m", "openrlhf.cli.train_ppo_ray"]
    f = launch.flags
    assert _flag(f, "--reward.model_name_or_path") == str(dirs / "rm") and "--reward.remote_url" not in f
    assert _flag(f, "--actor.model_name_or_path") == str(dirs / "policy")
    assert _flag(f, "--vllm.num_engines") == "8" and "--train.colocate_all" in f and "--vllm.enable_sleep" in f
    assert not launch.files and not launch.env_vars


def test_remote_and_par_commands(dirs, monkeypatch):
    plain = build_ppo_launch(cfg_for(dirs, f"reward.url={URL}"))
    assert _flag(plain.flags, "--reward.remote_url") == URL and not plain.files
    par = build_ppo_launch(cfg_for(dirs, f"reward.url={URL}", "par.enabled=true",
                                   f"par.references={dirs / 'refs.jsonl'}"), token="tok")
    assert _flag(par.flags, "--reward.remote_url") == REWARD_FUNC_NAME
    assert par.files == {REWARD_FUNC_NAME: par_reward.__file__, REFERENCES_NAME: str(dirs / "refs.jsonl")}
    assert par.env_vars == {par_reward.ENV_URL: URL, par_reward.ENV_TOKEN: "tok",
                            par_reward.ENV_REFERENCES: REFERENCES_NAME, par_reward.ENV_MISSING: "error"}
    assert SECRET == par_reward.ENV_TOKEN and "***" in par.display() and "tok " not in par.display()
    # A token without PAR still needs our reward_func file: OpenRLHF's client sends no auth header.
    token_only = build_ppo_launch(cfg_for(dirs, f"reward.url={URL}"), token="tok")
    assert _flag(token_only.flags, "--reward.remote_url") == REWARD_FUNC_NAME
    assert par_reward.ENV_REFERENCES not in token_only.env_vars


@needs_openrlhf
@pytest.mark.parametrize("overrides", [
    ("reward.checkpoint={rm}",),
    ("reward.checkpoint={rm}", "reward.normalize=true", "train.advantage_estimator=reinforce_baseline",
     "train.n_samples_per_prompt=4", "data.label_key=answer", "data.max_samples=100", "placement.colocate_all=false",
     "vllm.enable_sleep=false", "extra_args=[--logger.wandb.project, idrm]"),
    ("reward.url=" + URL,),
    ("reward.url=" + URL, "par.enabled=true", "par.references={refs}"),
])
def test_flags_are_accepted_by_the_installed_openrlhf_parser(dirs, overrides):
    cfg = cfg_for(dirs, *(o.format(rm=dirs / "rm", refs=dirs / "refs.jsonl") for o in overrides))
    launch = build_ppo_launch(cfg)
    args = openrlhf_cli.check_ppo_flags(launch.flags).args  # OpenRLHF's hierarchized namespace
    assert args.actor.model_name_or_path == str(dirs / "policy")
    assert args.data.prompt_dataset == "/data/prompts.jsonl" and args.ds.zero_stage == 3
    if cfg.reward.url:
        expected = [REWARD_FUNC_NAME] if cfg.par.enabled else [URL]
        assert args.reward.remote_url == expected and args.reward.model_name_or_path is None
        assert args.critic.model_name_or_path == str(dirs / "policy")  # OpenRLHF's fix-up: GAE critic from actor
    else:
        assert args.reward.model_name_or_path == str(dirs / "rm") and args.reward.remote_url is None


@needs_openrlhf
def test_the_parser_refuses_what_openrlhf_would_refuse(dirs):
    flags = build_ppo_launch(cfg_for(dirs, f"reward.checkpoint={dirs / 'rm'}")).flags
    typo = r"--reward\.normalise_enable \(did you mean --reward\.normalize_enable\?\)"
    with pytest.raises(openrlhf_cli.FlagError, match=typo):
        openrlhf_cli.check_ppo_flags([*flags, "--reward.normalise_enable"])
    with pytest.raises(openrlhf_cli.FlagError, match="invalid int value"):
        openrlhf_cli.check_ppo_flags([*flags, "--vllm.num_engines", "two"])
    rloo = build_ppo_launch(cfg_for(dirs, f"reward.checkpoint={dirs / 'rm'}", "train.advantage_estimator=rloo"))
    with pytest.raises(openrlhf_cli.FlagError, match="rloo requires n_samples_per_prompt > 1"):
        openrlhf_cli.check_ppo_flags(rloo.flags)
    assert "--reward.remote_url" in openrlhf_cli.ppo_flag_names()


def test_tokenizer_mismatch_is_refused(dirs):
    assert check_tokenizers_match(str(dirs / "rm"), str(dirs / "policy")) is None
    with pytest.raises(CheckError, match="differs from the policy's.*vocabularies differ.*set reward.url"):
        check_tokenizers_match(str(dirs / "rm"), str(dirs / "other_policy"))
    note = check_tokenizers_match(str(dirs / "rm"), "some-org/not-downloaded-model")
    assert note.startswith("tokenizer match not checked")
    cfg = cfg_for(dirs, f"reward.checkpoint={dirs / 'rm'}", f"policy.model_name_or_path={dirs / 'other_policy'}")
    with pytest.raises(CheckError, match="differs from the policy's"):
        preflight(cfg, require_openrlhf=False)


def test_checkpoint_layout_is_checked(dirs, tmp_path, student_tokenizer):
    info = check_reward_checkpoint(str(dirs / "rm"))
    assert (info.value_head_prefix, info.base_model_prefix, info.hidden_size) == ("score", "model", 64)
    model = tiny.build_tiny_student(student_tokenizer, num_layers=1)
    broken = save_reward_model(model, student_tokenizer, tmp_path / "b")
    weights = load_file(broken / "model.safetensors")
    save_file({k: v for k, v in weights.items() if k != "score.weight"}, broken / "model.safetensors")
    with pytest.raises(CheckError, match="no value head `score.weight`"):
        check_reward_checkpoint(str(broken))
    with pytest.raises(CheckError, match="not a directory"):
        check_reward_checkpoint(str(tmp_path / "nope"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckError, match="no config.json"):
        check_reward_checkpoint(str(tmp_path / "empty"))


def test_config_refuses_routes_that_cannot_work(dirs):
    with pytest.raises(ConfigError, match="only one of reward.checkpoint"):
        cfg_for(dirs, "reward.checkpoint=/x", f"reward.url={URL}")
    with pytest.raises(ConfigError, match="PAR shapes the reward server's answers"):
        cfg_for(dirs, "reward.checkpoint=/x", "par.enabled=true", "par.references=r.jsonl")
    with pytest.raises(ConfigError, match="in-cluster normalisation needs train.zero_stage=3"):
        cfg_for(dirs, "reward.checkpoint=/x", "reward.normalize=true", "train.zero_stage=2")
    with pytest.raises(CheckError, match="missing reward.checkpoint or reward.url"):
        preflight(cfg_for(dirs), require_openrlhf=False)


def test_without_openrlhf_it_says_how_to_install(dirs, monkeypatch, capsys):
    monkeypatch.setattr(openrlhf_cli.importlib.util, "find_spec", lambda name: None)
    cfg = cfg_for(dirs, f"reward.checkpoint={dirs / 'rm'}")
    _, notes = preflight(cfg, require_openrlhf=False)
    assert any("flags NOT checked" in n and "pip install 'idrm_ray[ppo]'" in n for n in notes)
    with pytest.raises(openrlhf_cli.OpenRLHFMissing, match="pip install --no-deps openrlhf==0.11.2"):
        preflight(cfg, require_openrlhf=True)


def test_dry_run_and_submit(dirs, monkeypatch, capsys):
    monkeypatch.setenv("IDRM_TEST_TOKEN", "tok-123")
    cfg = cfg_for(dirs, f"reward.url={URL}", "reward.token_env=IDRM_TEST_TOKEN", "par.enabled=true",
                  f"par.references={dirs / 'refs.jsonl'}")
    lines = []
    assert run_ppo(cfg, dry_run=True, out=lines.append) == 0
    text = "\n".join(lines)
    assert "--reward.remote_url idrm_par_reward.py" in text and "tok-123" not in text
    assert "check: PAR references: 1 prompts, 0 with precomputed ref_rewards" in text

    class FakeClient:
        def __init__(self, address):
            self.address = address

        def submit_job(self, *, entrypoint, runtime_env, submission_id):
            staged = sorted(p.name for p in Path(runtime_env["working_dir"]).iterdir())
            self.seen = (entrypoint, staged, runtime_env["env_vars"], submission_id)
            FakeClient.last = self
            return "raysubmit_1"

    launch, _ = preflight(cfg, require_openrlhf=False)
    job_id = submit_launch(launch, address="http://head:8265", submission_id="ppo-1", client_factory=FakeClient)
    assert job_id == "raysubmit_1"
    entrypoint, staged, env, sid = FakeClient.last.seen
    assert entrypoint.startswith("python -m openrlhf.cli.train_ppo_ray --actor.model_name_or_path")
    assert staged == [REFERENCES_NAME, REWARD_FUNC_NAME] and env[par_reward.ENV_TOKEN] == "tok-123" and sid == "ppo-1"


def test_cli_dry_run_and_one_line_errors(dirs, capsys):
    base = [f"policy.model_name_or_path={dirs / 'policy'}", "data.prompt_dataset=/d.jsonl"]
    assert main(["ppo", "--dry-run", *base, f"reward.checkpoint={dirs / 'rm'}"]) == 0
    out = capsys.readouterr().out
    assert "check: reward tokenizer == policy tokenizer" in out and "--reward.model_name_or_path" in out
    assert main(["ppo", "--dry-run", *base, "reward.chekpoint=/x"]) == 2
    assert "did you mean 'reward.checkpoint'" in capsys.readouterr().err
    assert main(["ppo", "--dry-run", *base, f"reward.checkpoint={dirs / 'rm'}",
                 f"policy.model_name_or_path={dirs / 'other_policy'}"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("idrm-ray: ppo check failed: reward tokenizer") and err.count("\n") == 1
    assert main(["ppo", "--help-config"]) == 0 and "reward.url" in capsys.readouterr().out


def test_chat_template_mismatch_between_rm_and_ppo_is_refused(dirs, tmp_path, student_tokenizer):
    """The render setting saved in the checkpoint (DESIGN.md decision 9) must agree with
    OpenRLHF's --data.apply_chat_template, or PPO would score text the RM never saw."""
    raw_rm = tmp_path / "raw_rm"
    render = {"chat_template": False, "template": ["", "", ""], "max_len": 64}
    save_reward_model(tiny.build_tiny_student(student_tokenizer, num_layers=1), student_tokenizer, raw_rm,
                      metadata={"render": render})
    with pytest.raises(CheckError, match="trained on raw prompt \\+ response.*data.apply_chat_template=false"):
        preflight(cfg_for(dirs, f"reward.checkpoint={raw_rm}"), require_openrlhf=False)
    _, notes = preflight(cfg_for(dirs, f"reward.checkpoint={raw_rm}", "data.apply_chat_template=false"),
                         require_openrlhf=False)
    assert any("agree on the chat template (off)" in n for n in notes)
    # A checkpoint without the record is named as unchecked, not passed silently.
    _, notes = preflight(cfg_for(dirs, f"reward.checkpoint={dirs / 'rm'}"), require_openrlhf=False)
    assert any("chat template not checked" in n for n in notes)
