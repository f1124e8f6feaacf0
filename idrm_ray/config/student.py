"""The train tree's `student` section: the reward model trained (a hub id, a local directory or
a tiny random one), how it reads its text, and which of its weights train (LoRA, top blocks)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from idrm_ray.configtree.base import MIN_LEN, Dtype, param, require, section


@dataclass(frozen=True)
class StudentTinyConfig:
    """Sizes of the built-in tiny student (`student.name_or_path=tiny`, random init)."""

    family: Literal["llama", "qwen2", "mistral"] = param("llama", "Decoder architecture of the tiny student.")
    num_layers: int = param(4, "Transformer blocks (M).")
    hidden_size: int = param(64, "Hidden size d.")
    num_heads: int = param(4, "Query heads H_s.")
    num_kv_heads: int = param(2, "Key/value heads (GQA when fewer than num_heads).")
    seed: int = param(0, "Seed of the random init.")

    def __post_init__(self):
        require(self, self.num_layers >= 1, "num_layers", "needs at least one block")
        require(self, self.num_heads >= 1 and self.hidden_size % self.num_heads == 0, "hidden_size",
                f"must be a positive multiple of num_heads ({self.num_heads})")
        require(self, self.num_kv_heads >= 1 and self.num_heads % self.num_kv_heads == 0, "num_kv_heads",
                f"must divide num_heads ({self.num_heads}) for GQA")


@dataclass(frozen=True)
class TemplateConfig:
    """How prompt and response become the student's text: prefix + prompt + separator +
    response + suffix (HH transcripts need none; instruct models may want their chat markers)."""

    prefix: str = param("", "Text before the prompt.")
    separator: str = param("", "Text between prompt and response.")
    suffix: str = param("", "Text after the response (e.g. the EOS string read by the reward head).")


@dataclass(frozen=True)
class StudentLoraConfig:
    """LoRA adapters on the student (`peft`); the value head still trains in full. The saved
    checkpoint is merged (an ordinary reward model), with the adapter alone beside it in
    `adapter/`. With student.train_top_blocks = K > 0, adapters go into the top K blocks only."""

    r: int = param(0, "Adapter rank (0: no LoRA, the blocks train as student.train_top_blocks says).")
    alpha: float = param(16.0, "LoRA alpha; the update is scaled by alpha / r (OpenRLHF's default 16).")
    dropout: float = param(0.0, "Dropout on the adapters' input.")
    target_modules: tuple[str, ...] = param(
        ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"),
        "Linear layers (by name) in each block that get adapters. ID needs q_proj and k_proj among them to "
        "steer the distilled maps through the adapters.")

    def __post_init__(self):
        require(self, self.r >= 0, "r", "must be >= 0 (0 turns LoRA off)")
        require(self, self.alpha > 0, "alpha", "must be > 0")
        require(self, 0 <= self.dropout < 1, "dropout", "must be in [0, 1)")
        require(self, not self.r or len(self.target_modules) > 0, "target_modules",
                "name at least one Linear layer, e.g. [q_proj, k_proj, v_proj, o_proj]")


@dataclass(frozen=True)
class StudentConfig:
    """The reward model being trained (decoder-only, value head on the last token, Eq. 1)."""

    name_or_path: str = param("tiny", "Hub id, local HF directory, or `tiny` for the built-in tiny model.")
    tiny: StudentTinyConfig = section(StudentTinyConfig)
    max_len: int = param(1024, "Max tokens of prompt+response per sequence (METHOD.md §7).")
    dtype: Dtype = param("auto", "Weight dtype at load; auto follows deepspeed.precision (fp32 without DeepSpeed).")
    attn_implementation: Literal["sdpa", "eager", "flash_attention_2", "flash_attention_3", "flex_attention"] = param(
        "sdpa", "transformers attention kernel of the student's own forward.")
    gradient_checkpointing: bool = param(False, "Recompute activations in backward (saves memory on large students).")
    chat_template: bool = param(
        False, "Render the prompt as a user turn and the response as the assistant turn with the student "
               "tokenizer's own chat template (as OpenRLHF's reward dataset with --apply_chat_template). Saved in "
               "the checkpoint; eval, the reward server and the PPO builder follow it. Instruct models want it.")
    template: TemplateConfig = section(TemplateConfig)
    train_top_blocks: int = param(
        0, "0: every parameter trains; K: only the top K decoder blocks, the final norm and the value head "
           "(embeddings and lower blocks frozen, no gradients or optimizer state). ID's top_n blocks must be "
           "among them. With LoRA: adapters in the top K blocks only.")
    lora: StudentLoraConfig = section(StudentLoraConfig)

    def __post_init__(self):
        require(self, bool(self.name_or_path.strip()), "name_or_path", "give a hub id, a local directory or `tiny`")
        require(self, self.train_top_blocks >= 0, "train_top_blocks", "must be >= 0 (0 trains all blocks)")
        require(self, self.name_or_path != "tiny" or self.train_top_blocks <= self.tiny.num_layers,
                "train_top_blocks", f"exceeds the tiny student's {self.tiny.num_layers} blocks: lower it "
                                    "or raise student.tiny.num_layers")
        require(self, self.max_len >= MIN_LEN, "max_len", f"must be >= {MIN_LEN} tokens (METHOD.md §7 uses 1024)")
        t = self.template
        require(self, not (self.chat_template and (t.prefix or t.separator or t.suffix)), "chat_template",
                "the chat template and student.template (prefix/separator/suffix) both render the text: use one")

    @property
    def render(self) -> "str | tuple[str, str, str] | None":
        """How prompt and response become the student's text, as `core.units.encode_pairs` takes
        it: "chat", a (prefix, separator, suffix) template, or None (prompt + response)."""
        if self.chat_template:
            return "chat"
        t = self.template
        return (t.prefix, t.separator, t.suffix) if (t.prefix or t.separator or t.suffix) else None
