"""A model under DeepSpeed: the one trainer behind pretraining, SFT, reward models and the RL learner.

`DeepSpeedTrainer` owns the DeepSpeed engine (ZeRO stage and bf16 from config; gloo on CPU,
NCCL on GPU), computes token log-probabilities, takes optimizer steps, and writes atomic
checkpoints (HF weights + DeepSpeed optimizer state + RNG + caller state) that `load_latest`
resumes.
In pretraining, SFT and reward models it runs in the recipe's process (world size 1), driven by
`train_loop`, the one resumable step loop (the recipe supplies the step's loss); the RL learner
runs one per rank inside Ray actors with the same code.
"""

from __future__ import annotations

import os
import random
import shutil
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm import tqdm

from rlpost.batching import collate, epoch_batches
from rlpost.config import ConfigError, doc
from rlpost.distributed.weight_sync import free_port
from rlpost.model import bf16_is_native, load_model


@dataclass
class OptimConfig:
    lr: float = doc("Peak learning rate (AdamW).", 1e-3)
    weight_decay: float = doc("AdamW weight decay.", 0.0)
    beta1: float = doc("AdamW beta1.", 0.9)
    beta2: float = doc("AdamW beta2.", 0.95)
    warmup_steps: int = doc("Linear warm-up steps.", 0)
    schedule: str = doc("Learning-rate schedule after warm-up: 'constant' or 'cosine' (to 10% of peak).", "constant")
    grad_clip: float = doc("Clip the global gradient norm to this value (0 disables).", 1.0)

    def validate(self):
        if self.schedule not in ("constant", "cosine"):
            raise ConfigError(f"optim.schedule: {self.schedule!r} is not one of ['constant', 'cosine']")


@dataclass
class DeepSpeedConfig:
    zero_stage: int = doc("DeepSpeed ZeRO stage (0, 2 or 3).", 0)
    bf16: bool = doc(
        "Train in bf16 (2.5x faster than fp32 on AVX-512-bf16 CPUs); weights are kept in fp32 by the optimizer. "
        "On hardware without bf16 arithmetic (e.g. an AVX2-only CPU) training falls back to fp32, which is faster there.",
        True,
    )
    world_size: int = doc("Learner ranks (processes); each is a Ray actor in RL, 1 in pretrain/SFT recipes.", 1)
    threads: int = doc(
        "torch threads per rank (CPU). 1 is safest on a shared or time-shared box: "
        "oversubscribed OpenMP threads made steps up to 8x slower here.",
        1,
    )
    dist_backend: str = doc("torch.distributed backend: 'gloo' on CPU, 'nccl' on GPU.", "gloo")

    def validate(self):
        if self.zero_stage not in (0, 1, 2, 3):
            raise ConfigError(f"deepspeed.zero_stage: {self.zero_stage} is not one of [0, 1, 2, 3]")
        if self.dist_backend not in ("gloo", "nccl"):
            raise ConfigError(f"deepspeed.dist_backend: {self.dist_backend!r} is not one of ['gloo', 'nccl']")


def init_distributed(rank: int, world_size: int, master_addr: str, master_port: int, backend: str) -> None:
    """Join the learner's torch.distributed world (idempotent)."""
    import deepspeed

    os.environ.update(
        RANK=str(rank),
        WORLD_SIZE=str(world_size),
        LOCAL_RANK=str(rank) if backend == "gloo" else "0",
        MASTER_ADDR=master_addr,
        MASTER_PORT=str(master_port),
    )
    if not torch.distributed.is_initialized():
        deepspeed.init_distributed(dist_backend=backend, auto_mpi_discovery=False)


def _lr_lambda(optim: OptimConfig, total_steps: int):
    import math

    def factor(step: int) -> float:
        if optim.warmup_steps and step < optim.warmup_steps:
            return (step + 1) / optim.warmup_steps
        if optim.schedule == "cosine" and total_steps > optim.warmup_steps:
            progress = min(1.0, (step - optim.warmup_steps) / (total_steps - optim.warmup_steps))
            return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress))
        return 1.0

    return factor


def token_logprobs(logits: torch.Tensor, input_ids: torch.Tensor) -> torch.Tensor:
    """log p(input_ids[:, t+1] | prefix) for every position: shape [B, T-1], fp32."""
    logits = logits[:, :-1].float()
    return torch.gather(logits.log_softmax(-1), 2, input_ids[:, 1:, None]).squeeze(-1)


def masked_lm_loss(logits: torch.Tensor, input_ids: torch.Tensor, loss_mask: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy over the tokens whose mask is 1 (mask aligned with input_ids)."""
    target_mask = loss_mask[:, 1:].float()
    nll = -token_logprobs(logits, input_ids)
    return (nll * target_mask).sum() / target_mask.sum().clamp(min=1.0)


class DeepSpeedTrainer:
    def __init__(
        self,
        model_path: str,
        optim: OptimConfig,
        deepspeed_cfg: DeepSpeedConfig,
        *,
        total_steps: int,
        micro_batch_size: int,
        rank: int = 0,
        master_addr: str = "127.0.0.1",
        master_port: int | None = None,
        seed: int = 0,
        model=None,
    ):
        """Trains the causal LM at `model_path`, or `model` when given (an already-built HF model,
        e.g. a reward model with a score head; only its parameters with requires_grad train)."""
        import deepspeed

        torch.set_num_threads(deepspeed_cfg.threads)
        torch.manual_seed(seed + rank)
        if master_port is None:  # a single local rank: any free port will do
            master_port = free_port()
        init_distributed(rank, deepspeed_cfg.world_size, master_addr, master_port, deepspeed_cfg.dist_backend)
        self.rank = rank
        self.bf16 = deepspeed_cfg.bf16 and bf16_is_native()
        if deepspeed_cfg.bf16 and not self.bf16 and rank == 0:
            print("deepspeed.bf16: this device has no bf16 arithmetic (AVX-512-bf16, AMX or a GPU); training in fp32")
        model = model if model is not None else load_model(model_path)
        self.model_config = model.config
        # Plain torch AdamW: DeepSpeed's FusedAdam would JIT-build for ~3.5 minutes on CPU for no gain here.
        optimizer = torch.optim.AdamW(
            [p for p in model.parameters() if p.requires_grad],
            lr=optim.lr,
            betas=(optim.beta1, optim.beta2),
            weight_decay=optim.weight_decay,
        )
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _lr_lambda(optim, total_steps))
        ds_config = {
            "train_micro_batch_size_per_gpu": micro_batch_size,
            "gradient_accumulation_steps": 1,
            "gradient_clipping": optim.grad_clip,
            "zero_optimization": {"stage": deepspeed_cfg.zero_stage},
            "bf16": {"enabled": self.bf16},
            "zero_allow_untested_optimizer": True,
            "steps_per_print": 10**9,
            "wall_clock_breakdown": False,
        }
        self.engine, _, _, self.scheduler = deepspeed.initialize(
            model=model, optimizer=optimizer, lr_scheduler=scheduler, config=ds_config
        )
        if not self.bf16 and deepspeed_cfg.zero_stage == 0:
            # DeepSpeed's plain fp32 path clips the gradients but drops their norm, so
            # get_global_grad_norm() would be None: clip here and keep it.
            engine = self.engine

            def clip_and_keep_norm():
                engine._global_grad_norm = torch.nn.utils.clip_grad_norm_(
                    engine.module.parameters(), engine.gradient_clipping()
                )

            engine.clip_fp32_gradients = clip_and_keep_norm

    # -- compute ---------------------------------------------------------------------------------
    def logits(self, input_ids: torch.Tensor) -> torch.Tensor:
        # No attention mask: batches are right-padded, and causal attention keeps padding out of
        # every real token's logits.
        return self.engine(input_ids=input_ids, use_cache=False).logits

    def to_device(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The batch's tensors on the engine's device (a GPU under DS_ACCELERATOR=cuda)."""
        return {k: v.to(self.engine.device) for k, v in batch.items()}

    def train_mode(self, training: bool = True) -> None:
        """Training (dropout on) or evaluation mode of the model."""
        self.engine.train(training)

    def backward(self, loss: torch.Tensor, last_micro_batch: bool = True) -> None:
        """Accumulate the gradient of `loss`; after a mini-batch's last micro-batch, step.

        At that boundary DeepSpeed averages the accumulated gradients over the data-parallel
        ranks, clips them, and steps the optimizer and the LR schedule."""
        self.engine.set_gradient_accumulation_boundary(last_micro_batch)
        self.engine.backward(loss)
        self.engine.step()  # an optimizer step only at the boundary; DeepSpeed wants it every micro-batch

    def grad_norm(self) -> float:
        """Global gradient norm before clipping, of the last optimizer step (NaN if not reported)."""
        norm = self.engine.get_global_grad_norm()
        return float(norm) if norm is not None else float("nan")

    def lr(self) -> float:
        return self.scheduler.get_last_lr()[0]

    def sum_over_ranks(self, values: torch.Tensor) -> torch.Tensor:
        """Sum of a small tensor over all ranks (a new CPU tensor); every rank must call."""
        reduced = values.to(self.engine.device, copy=True)  # NCCL reduces GPU tensors only
        torch.distributed.all_reduce(reduced)
        return reduced.cpu()

    def train_lm_batch(self, input_ids: torch.Tensor, loss_mask: torch.Tensor) -> dict:
        """One optimizer step of masked next-token cross-entropy (pretraining and SFT)."""
        self.train_mode()
        input_ids, loss_mask = input_ids.to(self.engine.device), loss_mask.to(self.engine.device)
        loss = masked_lm_loss(self.logits(input_ids), input_ids, loss_mask)
        self.backward(loss)
        return {"loss": loss.item(), "grad_norm": self.grad_norm(), "lr": self.lr()}

    # -- weights and checkpoints -------------------------------------------------------------------
    @contextmanager
    def gathered_weights(self) -> Iterator[dict[str, torch.Tensor]]:
        """The model's HF-named weights themselves, not copies (gathered from all ranks under
        ZeRO-3), for the duration of the `with`: read them there, once. All ranks must enter."""
        import deepspeed

        module = self.engine.module
        params = list(module.parameters())
        with deepspeed.zero.GatheredParameters(params, enabled=hasattr(params[0], "ds_id")):
            yield module.state_dict()

    def full_state_dict(self) -> dict[str, torch.Tensor]:
        """fp32 HF-named weights on CPU, a copy (gathered from all ranks under ZeRO-3). All ranks must call."""
        with self.gathered_weights() as weights:
            return {k: v.to("cpu", torch.float32, copy=True) for k, v in weights.items()}

    def save_hf(self, path: str | Path, tokenizer) -> None:
        """Save the current weights as an HF folder (rank 0 writes; all ranks must call)."""
        state = self.full_state_dict()
        if self.rank == 0:
            Path(path).mkdir(parents=True, exist_ok=True)
            with torch.device("meta"):
                model = type(self.engine.module)(self.model_config)
            model.load_state_dict(state, assign=True)
            model.tie_weights()
            model.save_pretrained(str(path), safe_serialization=True)
            tokenizer.save_pretrained(str(path))

    def save_checkpoint(self, run_dir: str | Path, step: int, tokenizer, client_state: dict, keep: int = 2) -> Path:
        """Atomically write `run_dir/checkpoints/step_{step}`: HF policy, optimizer, RNG, caller state.

        Written into a temporary folder and renamed, so a crash mid-save leaves the previous
        checkpoint intact; the `latest` file is replaced atomically after the rename."""
        root = Path(run_dir) / "checkpoints"
        tmp, final = root / f".tmp_step_{step}", root / f"step_{step}"
        if self.rank == 0:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
        torch.distributed.barrier()
        self.save_hf(tmp / "policy", tokenizer)
        state = {**client_state, "step": step, "rng": _rng_state()}
        self.engine.save_checkpoint(str(tmp / "engine"), tag="state", client_state=state)
        torch.distributed.barrier()
        if self.rank == 0:
            shutil.rmtree(final, ignore_errors=True)
            os.replace(tmp, final)
            (root / "latest.tmp").write_text(final.name)
            os.replace(root / "latest.tmp", root / "latest")
            for old in sorted(root.glob("step_*"), key=lambda p: int(p.name.split("_")[1]))[:-keep]:
                shutil.rmtree(old, ignore_errors=True)
        torch.distributed.barrier()
        return final

    def load_latest(self, run_dir: str | Path, step: int | None = None) -> dict | None:
        """Resume from `run_dir/checkpoints/latest` (or that folder's `step`); returns the caller
        state, or None if there is no such checkpoint."""
        path = latest_checkpoint(run_dir) if step is None else Path(run_dir) / "checkpoints" / f"step_{step}"
        if path is None or not path.exists():
            return None
        _, state = self.engine.load_checkpoint(str(path / "engine"), tag="state")
        _set_rng_state(state.pop("rng"))
        return state


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    pointer = Path(run_dir) / "checkpoints" / "latest"
    if not pointer.exists():
        return None
    path = pointer.parent / pointer.read_text().strip()
    return path if path.exists() else None


def _rng_state() -> dict:
    return {"python": random.getstate(), "torch": torch.get_rng_state()}


def _set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    torch.set_rng_state(state["torch"])


def train_loop(
    trainer: DeepSpeedTrainer,
    lengths: list[int],
    train_step: Callable[[list[int], int], dict],
    *,
    steps: int,
    batch_size: int,
    seed: int,
    run_dir: str | Path,
    tokenizer,
    logger,
    checkpoint_every: int,
    resume: bool,
    evaluate: Callable[[int], dict] | None = None,
    eval_every: int = 0,
    on_checkpoint: Callable[[int, Path], dict] | None = None,
    desc: str = "train",
    max_minutes: float = 0.0,
) -> int:
    """The resumable loop of pretraining, SFT and reward models: length-bucketed shuffled epochs
    over examples of `lengths` (`epoch_batches`), metrics every step, an atomic checkpoint every
    `checkpoint_every` steps and at the end.

    `train_step(indices, step) -> metrics` takes one optimizer step on the examples at `indices`;
    its metrics (with "loss" and "lr") are logged with the epoch. Batch order is a pure function
    of (seed, step), so a resumed run continues exactly where the interrupted one stopped.
    `evaluate(step) -> dict` adds metrics every `eval_every` steps; `on_checkpoint(step,
    checkpoint_dir) -> dict` adds them at each checkpoint (e.g. held-out accuracy). With
    `max_minutes`, training stops (with a checkpoint) once that much wall time has passed.
    Returns the last step trained."""
    start = 0
    if resume and (state := trainer.load_latest(run_dir)) is not None:
        start = state["step"]
        print(f"resumed from step {start}")
    per_epoch = max(1, len(lengths) // batch_size)
    batches: dict[int, list[list[int]]] = {}
    bar = tqdm(range(start, steps), initial=start, total=steps, desc=desc, disable=trainer.rank != 0)
    deadline = time.time() + 60 * max_minutes if max_minutes else float("inf")
    done = start
    for step in bar:
        epoch, index = divmod(step, per_epoch)
        if epoch not in batches:
            batches = {epoch: epoch_batches(lengths, batch_size, seed, epoch)}
        metrics = {**train_step(batches[epoch][index], step), "epoch": step / per_epoch}
        bar.set_postfix(loss=f"{metrics['loss']:.3f}", lr=f"{metrics['lr']:.1e}")
        done = step + 1
        out_of_time = time.time() > deadline
        if eval_every and done % eval_every == 0:
            metrics.update(evaluate(done))
        if done % checkpoint_every == 0 or done == steps or out_of_time:
            path = trainer.save_checkpoint(run_dir, done, tokenizer, {})
            if on_checkpoint is not None:
                metrics.update(on_checkpoint(done, path))
        if trainer.rank == 0:
            logger.log(done, metrics)
        if out_of_time:
            print(f"stopping after {max_minutes} minutes at step {done}")
            break
    return done


def train_lm(trainer: DeepSpeedTrainer, examples: list[tuple[list[int], list[int]]], *, tokenizer, **loop) -> int:
    """Pretraining and SFT: `train_loop` (its keyword arguments in `loop`) with masked next-token
    cross-entropy on `examples`, (token ids, loss mask) pairs. Returns the last step trained."""

    def lm_step(indices: list[int], _step: int) -> dict:
        input_ids, loss_mask = collate([examples[i] for i in indices], tokenizer.pad_token_id)
        return trainer.train_lm_batch(input_ids, loss_mask)

    return train_loop(trainer, [len(ids) for ids, _ in examples], lm_step, tokenizer=tokenizer, **loop)
