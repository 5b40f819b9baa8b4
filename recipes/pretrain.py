"""Stage 1: train the tokenizer and pretrain a base model with DeepSpeed.

    python recipes/pretrain.py --config recipes/configs/pretrain_tiny.yaml [--train.steps 600]
    ray job submit --working-dir . -- python recipes/pretrain.py --config recipes/configs/pretrain_tiny.yaml \
        --run_dir $PWD/runs/pretrain_tiny

The embedded corpus is text rendered from the synthetic task world (rlpost/corpus.py); add
your own with `--data.corpus '[notes.txt, docs.jsonl]'` (a .txt file of blank-line separated
documents, a JSONL file with a "text" field, or a Hugging Face dataset name if you have a
network). Writes `<run_dir>/tokenizer`, checkpoints, `metrics.jsonl`, and the base model as an
HF folder in `<run_dir>/model`. Re-running with `--resume` continues from the last checkpoint.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from rlpost.config import check_path, doc, run_command, save_config, section
from rlpost.corpus import synthetic_corpus
from rlpost.data import read_text_corpus
from rlpost.metrics import LoggingConfig, MetricsLogger
from rlpost.model import new_model, num_parameters, save_model
from rlpost.tokenizer import EOS, load_tokenizer, train_tokenizer
from rlpost.trainer import DeepSpeedConfig, DeepSpeedTrainer, OptimConfig, latest_checkpoint, train_lm


@dataclass
class PretrainData:
    synthetic_docs: int = doc("Documents of the embedded synthetic corpus (0 for none).", 40000)
    corpus: list[str] = doc("Extra text sources: .txt / .jsonl files or Hugging Face dataset names.", [])
    seq_len: int = doc("Tokens per training sequence (documents are packed).", 256)


@dataclass
class PretrainTokenizer:
    vocab_size: int = doc("BPE vocabulary size, special tokens included.", 1024)
    train_docs: int = doc("Documents used to fit the tokenizer.", 20000)


@dataclass
class PretrainModel:
    preset: str = doc("Model size preset from rlpost.model.PRESETS ('tiny' ~3M, 'small' ~21M).", "tiny")


@dataclass
class PretrainTrain:
    steps: int = doc("Optimizer steps.", 600)
    batch_size: int = doc("Sequences per step.", 32)
    checkpoint_every: int = doc("Write a resumable checkpoint every N steps.", 200)


@dataclass
class PretrainConfig:
    run_dir: str = doc("Output folder of this run.", "runs/pretrain_tiny")
    resume: bool = doc("Continue from the last checkpoint in run_dir if there is one.", False)
    seed: int = doc("Seed of initialisation, the corpus and the data order.", 0)
    data: PretrainData = section(PretrainData)
    tokenizer: PretrainTokenizer = section(PretrainTokenizer)
    model: PretrainModel = section(PretrainModel)
    train: PretrainTrain = section(PretrainTrain)
    optim: OptimConfig = field(
        default_factory=lambda: OptimConfig(lr=3e-3, warmup_steps=50, schedule="cosine", weight_decay=0.1)
    )
    deepspeed: DeepSpeedConfig = section(DeepSpeedConfig)
    logging: LoggingConfig = section(LoggingConfig)


def pack_documents(tokenizer, docs: list[str], seq_len: int) -> list[tuple[list[int], list[int]]]:
    """Concatenate BOS doc EOS ... and cut into seq_len chunks; every token is trained on."""
    eos = tokenizer.convert_tokens_to_ids(EOS)
    stream: list[int] = []
    for ids in tokenizer(docs, add_special_tokens=False)["input_ids"]:
        stream += [tokenizer.bos_token_id, *ids, eos]
    return [(stream[i : i + seq_len], [1] * seq_len) for i in range(0, len(stream) - seq_len + 1, seq_len)]


def main(cfg: PretrainConfig) -> Path:
    for i, source in enumerate(cfg.data.corpus):
        check_path(f"data.corpus[{i}]", source)
    run_dir = Path(cfg.run_dir)
    save_config(cfg, run_dir / "config.yaml")
    docs = synthetic_corpus(cfg.data.synthetic_docs, cfg.seed)
    for source in cfg.data.corpus:
        docs += read_text_corpus(source)
    if not docs:
        raise SystemExit("no pretraining text: set data.synthetic_docs > 0 or data.corpus")

    tok_dir, init_dir = run_dir / "tokenizer", run_dir / "init"
    resuming = cfg.resume and latest_checkpoint(run_dir) is not None
    if not resuming:
        tokenizer = train_tokenizer(docs[: cfg.tokenizer.train_docs], cfg.tokenizer.vocab_size, tok_dir)
        model = new_model(cfg.model.preset, tokenizer)
        print(f"model: {cfg.model.preset}, {num_parameters(model) / 1e6:.2f}M parameters")
        save_model(model, tokenizer, init_dir)
    tokenizer = load_tokenizer(tok_dir)
    examples = pack_documents(tokenizer, docs, cfg.data.seq_len)
    print(
        f"corpus: {len(docs)} documents, {len(examples) * cfg.data.seq_len / 1e6:.2f}M tokens, "
        f"{cfg.train.steps * cfg.train.batch_size / max(1, len(examples)):.1f} epochs"
    )

    trainer = DeepSpeedTrainer(
        str(init_dir),
        cfg.optim,
        cfg.deepspeed,
        total_steps=cfg.train.steps,
        micro_batch_size=cfg.train.batch_size,
        seed=cfg.seed,
    )
    logger = MetricsLogger(run_dir, cfg.logging, "pretrain", config=None)
    train_lm(
        trainer,
        examples,
        steps=cfg.train.steps,
        batch_size=cfg.train.batch_size,
        seed=cfg.seed,
        run_dir=run_dir,
        tokenizer=tokenizer,
        logger=logger,
        checkpoint_every=cfg.train.checkpoint_every,
        resume=cfg.resume,
        desc="pretrain",
    )
    trainer.save_hf(run_dir / "model", tokenizer)
    logger.close()
    print(f"base model written to {run_dir / 'model'}")
    return run_dir / "model"


if __name__ == "__main__":
    run_command(PretrainConfig, main)
