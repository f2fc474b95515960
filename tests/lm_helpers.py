"""Tiny randomly initialised causal LMs (no downloads) and a character tokenizer, for tests."""
from __future__ import annotations

import numpy as np
import torch

VOCAB = 97


def tiny_model(kind: str, *, vocab: int = VOCAB, ctx: int = 64, seed: int = 0):
    """A 2-layer model of the given architecture with d = 32: llama (tied), llama-bias (untied head
    with a bias), gpt2, gemma3 (final-logit soft-capping), qwen2 (untied)."""
    import transformers as tf

    torch.manual_seed(seed)
    common = dict(vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=ctx, initializer_range=0.2)
    if kind in ("llama", "llama-bias"):
        cfg = tf.LlamaConfig(**common, tie_word_embeddings=(kind == "llama"))
    elif kind == "gpt2":
        cfg = tf.GPT2Config(vocab_size=vocab, n_embd=32, n_layer=2, n_head=4, n_positions=ctx, initializer_range=0.2,
                            bos_token_id=1, eos_token_id=2)
    elif kind == "gemma3":
        cfg = tf.Gemma3TextConfig(**common, head_dim=8, final_logit_softcapping=2.0, sliding_window=16)
    elif kind == "qwen2":
        cfg = tf.Qwen2Config(**common, tie_word_embeddings=False)
    else:
        raise ValueError(kind)
    model = tf.AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)
    if kind == "llama-bias":
        head = torch.nn.Linear(32, vocab, bias=True)
        torch.nn.init.normal_(head.weight, std=0.2)
        torch.nn.init.normal_(head.bias, std=0.5)
        model.lm_head = head
    model.eval()
    return model


class CharTokenizer:
    """Bytes -> ids 3..(VOCAB-1); BOS = 1, pad = 0, eos = 2. Enough for the task encoders."""

    pad_token_id, bos_token_id, eos_token_id = 0, 1, 2
    chat_template = None

    def __call__(self, texts, add_special_tokens=True):
        out = []
        for t in texts:
            ids = [3 + (b % (VOCAB - 3)) for b in t.encode("utf-8")]
            out.append(([self.bos_token_id] if add_special_tokens else []) + ids)
        return {"input_ids": out}


def tiny_lm(kind: str = "llama", **kw):
    from fishersketch_core.models import wrap_model

    return wrap_model(tiny_model(kind, **kw), CharTokenizer(), model_id=f"tiny-{kind}")


def random_sequences(n: int, lo: int, hi: int, seed: int = 0, vocab: int = VOCAB):
    rng = np.random.default_rng(seed)
    return [rng.integers(3, vocab, size=int(rng.integers(lo, hi + 1))).tolist() for _ in range(n)]


def char_tokenizer_fast():
    """A real (saveable) Hugging Face byte-level tokenizer without merges: 259 ids, BOS=1, pad=0."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "<s>": 1, "</s>": 2}
    for ch in sorted(pre_tokenizers.ByteLevel.alphabet()):
        vocab[ch] = len(vocab)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A $B", special_tokens=[("<s>", 1)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>")


HF_VOCAB = 259


def tiny_hf_folder(path, kind: str = "llama", seed: int = 0):
    """Save a tiny model and the byte tokenizer as a Hugging Face folder (what users pass with --model)."""
    model = tiny_model(kind, vocab=HF_VOCAB, seed=seed)
    model.save_pretrained(path)
    char_tokenizer_fast().save_pretrained(path)
    return path
