"""Build a tiny random Llama model and a locally trained tokenizer, deterministically.

Nothing is downloaded: the tokenizer is a byte-level BPE trained with ``tokenizers`` on a corpus
generated here, and the weights come from a seeded ``LlamaForCausalLM`` initialisation. The same
arguments give the same bytes on every machine, so the demo and the tests share one builder.

    python -m components.demo.tiny_model --config local      # into storage.base_model of the local preset
    python -m components.demo.tiny_model --output /tmp/tiny --hidden-size 128 --layers 4 --shard-size 200KB

Exit codes: 0 built, 1 the output exists or cannot be written, 2 a usage or configuration error.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
from pathlib import Path

from components.common.cli import cli_config, fail, new_parser
from configs.errors import StepError

# A chat template so that vLLM (and transformers' apply_chat_template) can serve the model.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|' + message['role'] + '|>\\n' + message['content'] + '</s>\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\\n' }}{% endif %}"
)
SPECIAL_TOKENS = ["<unk>", "<s>", "</s>", "<pad>"]

_WORDS = [
    "the",
    "of",
    "and",
    "to",
    "in",
    "is",
    "that",
    "for",
    "it",
    "as",
    "with",
    "was",
    "on",
    "be",
    "by",
    "this",
    "are",
    "from",
    "at",
    "or",
    "an",
    "have",
    "not",
    "which",
    "question",
    "answer",
    "following",
    "multiple",
    "choice",
    "questions",
    "about",
    "subject",
    "true",
    "false",
    "which",
    "one",
    "model",
    "data",
    "train",
    "learn",
    "value",
    "energy",
    "force",
    "cell",
    "law",
    "state",
    "market",
    "history",
    "theory",
    "number",
    "function",
    "system",
    "process",
    "example",
    "result",
    "group",
    "power",
    "change",
    "water",
    "light",
    "time",
    "world",
    "people",
    "instruction",
    "input",
    "output",
    "write",
    "explain",
    "describe",
    "list",
    "give",
    "name",
    "summarise",
    "translate",
    "compute",
    "what",
    "why",
    "how",
    "when",
    "where",
    "who",
    "please",
    "short",
    "long",
    "sentence",
    "word",
    "words",
    "text",
    "code",
    "python",
    "abstract",
    "algebra",
    "anatomy",
    "astronomy",
    "biology",
    "chemistry",
    "computer",
    "science",
    "economics",
    "engineering",
    "mathematics",
    "medicine",
    "philosophy",
    "physics",
    "psychology",
    "sociology",
    "statistics",
    "geography",
    "politics",
]


def _corpus(seed: int, lines: int = 4000) -> list[str]:
    """Deterministic training text: words, MMLU-style prompts and answer letters."""
    rng = random.Random(seed)
    out = []
    for i in range(lines):
        words = " ".join(rng.choice(_WORDS) for _ in range(rng.randint(4, 16)))
        if i % 4 == 0:
            letter = "ABCD"[i % 16 // 4]
            out.append(
                f"{words}?\nA. {rng.choice(_WORDS)}\nB. {rng.choice(_WORDS)}\n"
                f"C. {rng.choice(_WORDS)}\nD. {rng.choice(_WORDS)}\nAnswer: {letter}\n\n"
            )
        else:
            out.append(f"{words.capitalize()}. {rng.randint(0, 999)}, {rng.choice(_WORDS)}!")
    return out


def build_tokenizer(output_dir: Path, vocab_size: int = 1024, seed: int = 0, model_max_length: int = 1024):
    """Train a byte-level BPE tokenizer locally and save it in Hugging Face format.

    Returns the ``PreTrainedTokenizerFast`` that was saved.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(_corpus(seed), trainer=trainer)
    bos = tokenizer.token_to_id("<s>")
    tokenizer.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", bos)]
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        pad_token="<pad>",
        model_max_length=model_max_length,
        padding_side="left",
    )
    fast.chat_template = CHAT_TEMPLATE
    fast.save_pretrained(output_dir)
    return fast


def build_tiny_llama(
    output_dir: str | Path,
    *,
    hidden_size: int = 64,
    intermediate_size: int = 128,
    num_layers: int = 2,
    num_heads: int = 4,
    num_kv_heads: int = 2,
    vocab_size: int = 1024,
    max_position_embeddings: int = 1024,
    tie_word_embeddings: bool = False,
    seed: int = 0,
    shard_size: str | None = None,
    dtype: str = "float32",
) -> Path:
    """Write a tiny random Llama model with its tokenizer to ``output_dir`` and return the path.

    The result loads with ``AutoModelForCausalLM``/``AutoTokenizer`` and trains with LLaMA-Factory.
    ``shard_size`` (e.g. ``"200KB"``) splits the weights into several safetensors shards with an
    index, as big checkpoints are laid out. Same arguments, same bytes.
    """
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer(out, vocab_size=vocab_size, seed=seed, model_max_length=max_position_embeddings)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=intermediate_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_kv_heads,
        max_position_embeddings=max_position_embeddings,
        tie_word_embeddings=tie_word_embeddings,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        rms_norm_eps=1e-5,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config).to(getattr(torch, dtype))
    model.generation_config = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        do_sample=False,
        max_new_tokens=32,
    )
    kwargs = {"max_shard_size": shard_size} if shard_size else {}
    model.save_pretrained(out, **kwargs)
    return out


# Upper bounds keep a typo (an extra zero or ten) from asking for terabytes and dying in the allocator,
# where no error handler runs and the temporary directory is left behind.
MAX_WIDTH = 8192
MAX_LAYERS = 64
MAX_VOCAB = 65536
_SHARD_SIZE = re.compile(r"^\s*\d+(\.\d+)?\s*[KMGT]B\s*$", re.IGNORECASE)


def _positive(text: str, limit: int | None = None) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {value}")
    if limit is not None and value > limit:
        raise argparse.ArgumentTypeError(f"must be at most {limit} for a tiny model, got {value}")
    return value


def _at_most(limit: int):
    def parse(text: str) -> int:
        return _positive(text, limit)

    parse.__name__ = "positive integer"  # argparse names the type in "invalid ... value"
    return parse


def _shard_size(text: str) -> str:
    if not _SHARD_SIZE.match(text):
        raise argparse.ArgumentTypeError(f"must be a size such as 200KB or 5MB (units KB, MB, GB, TB), got {text!r}")
    return text.strip()


def build_parser() -> argparse.ArgumentParser:
    """The CLI: the builder's sizes, each bounded so that a typo fails in argparse, not in the allocator."""
    parser = new_parser("components.demo.tiny_model", __doc__.split("\n\n")[0])
    parser.add_argument("--output", default=None, help="Directory to write (must not exist); default: the config's "
                        "storage.base_model under storage.mount_path.")
    parser.add_argument("--hidden-size", type=_at_most(MAX_WIDTH), default=64)
    parser.add_argument("--intermediate-size", type=_at_most(4 * MAX_WIDTH), default=128)
    parser.add_argument("--layers", type=_at_most(MAX_LAYERS), default=2)
    parser.add_argument("--vocab-size", type=_at_most(MAX_VOCAB), default=1024)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--shard-size", type=_shard_size, default=None,
                        help="e.g. 200KB: split the weights into shards.")
    parser.add_argument("--tie-word-embeddings", action="store_true")
    return parser


def main(argv: list[str] | None = None) -> int:
    """CLI entry point: build the tiny model into ``--output`` (written atomically).

    Exit 0 built, 1 the output exists or cannot be written, 2 a usage error.
    """
    from components.common.storage import OutputPathError, on_volume

    parser = build_parser()
    args = parser.parse_args(argv)
    if args.hidden_size % 4:
        parser.error(f"--hidden-size must be a multiple of the 4 attention heads, got {args.hidden_size}")
    try:
        cfg = cli_config(parser, args)
        output = args.output or str(on_volume(cfg, cfg.storage.base_model))
    except StepError as exc:
        return fail(parser, exc, code=2)  # the storage root or the config: a usage error
    try:
        if os.path.lexists(output):  # checked first: building takes seconds and would be thrown away
            raise OutputPathError(f"--output {output} already exists; refusing to overwrite it")
        _write_model(output, args)
    except StepError as exc:
        return fail(parser, exc)
    print(json.dumps({"model": output}))
    return 0


def _write_model(output: str, args: argparse.Namespace) -> None:
    """Build the model the flags describe into ``output``, atomically.

    Raises:
        StorageError: ``output`` is inside a published model, or the volume refused the write.
    """
    from safetensors import SafetensorError

    from components.common.storage import StorageError, atomic_directory, guard_output

    try:
        guard_output(output)  # not inside a published model
        with atomic_directory(output) as tmp:
            build_tiny_llama(tmp, hidden_size=args.hidden_size, intermediate_size=args.intermediate_size,
                             num_layers=args.layers, vocab_size=args.vocab_size, seed=args.seed,
                             shard_size=args.shard_size, tie_word_embeddings=args.tie_word_embeddings)
    except (StorageError, OSError, SafetensorError) as exc:  # safetensors reports a full disk as its own error
        raise StorageError(f"cannot write the model to {output}: {exc}") from exc


if __name__ == "__main__":
    raise SystemExit(main())
