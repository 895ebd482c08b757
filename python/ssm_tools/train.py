"""Training loop: oracle trajectories streamed from a task, teacher forcing on the model's own tokens.

Each step draws `batch_size` instances from the task's training distribution up to
`train_max_size` (`task.sample_train`: for addition each operand's length uniform in 1..max), turns
the task's oracle into trajectories through the real dispatch loop (`task.trajectories`) -- or, with
`pool`, takes them from a trajectory pool built once (ssm_tools.pool) -- and minimises cross-entropy
of tokens[:, j] given tokens[:, :j] wherever loss_mask[:, j] (prompt and tool answers are inputs, not
targets). A model that takes packed rows (Mamba) trains on the batch's episodes packed several to
a row with per-sequence state resets (`pack_batch`), the others on padded rows in a few length
groups (`length_groups`), each padded to its own longest, their gradients summed into one step; the
loss is the same either way, only the padding's work goes. AdamW, linear warmup then cosine decay,
bf16 autocast on CUDA. Checkpoints hold everything needed to continue bit-for-bit (model, optimizer,
scheduler, step, every RNG) and are written atomically, so `resume=True` after a kill continues
exactly where the last checkpoint stopped.

Under torchrun (several processes, `ssm_tools.distributed`) the model trains data-parallel: each
rank takes its episodes of the same whole batch (and packs them) and the loss is normalised by the
whole batch's count of learned tokens, so the steps do not depend on the number of processes (and a
checkpoint resumes on any).
"""
from __future__ import annotations

import csv
import math
import os
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from . import checkpoint, distributed, pool
from .config import make_eval_task, make_task
from .evaluate import evaluate, exact_trajectory_size
from . import vocab as V
from .models import build_model, load_pretrained, preset
from .models.pretrained import is_pretrained, read_config

CHECKPOINT = "checkpoint.pt"
VALIDATION_SEED = 4321  # the held-out episodes of checkpoint selection: never the test episodes (TEST_SEED)
LOG = "log.csv"
DTYPES = {"float32": torch.float32, "float64": torch.float64}  # the parameters' dtype


@dataclass
class TrainConfig:
    steps: int = 400
    batch_size: int = 32
    lr: float = 3e-3
    weight_decay: float = 0.0
    warmup: int = 40
    min_lr_ratio: float = 0.1  # cosine decays to lr * min_lr_ratio
    grad_clip: float = 1.0
    seed: int = 0
    train_max_size: int = 5
    ckpt_every: int = 100
    eval_every: int = 0  # 0: no evaluation during training
    eval_sizes: list[int] = field(default_factory=lambda: [10])
    eval_n: int = 32
    # Checkpoint selection on a held-out size (0: off, the last step's weights are the run's): every
    # select_every steps and at the last, the share of select_n validation episodes of size
    # select_size whose whole trajectory the model reproduces (teacher forced); the best step's
    # weights are kept in the checkpoint beside the last step's (ties: the earlier step).
    select_size: int = 0
    select_every: int = 100
    select_n: int = 32
    dtype: str = "float32"  # parameters (float64 for exact comparisons); CUDA computes in bf16 autocast
    pack: bool = True  # episodes packed into rows for models that take packed rows (else padded rows)
    group_lengths: bool = True  # padded rows in length groups (`length_groups`), else all padded to the longest
    pool: str = ""  # a trajectory pool file (ssm_tools.pool) to draw the batches from; "": fresh trajectories

    def __post_init__(self):
        for name in ("steps", "batch_size", "train_max_size", "ckpt_every", "eval_n", "select_every", "select_n"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) <= 0:
                raise ValueError(f"{name} must be a positive int, got {getattr(self, name)!r}")
        for name in ("warmup", "eval_every", "select_size"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 0:
                raise ValueError(f"{name} must be a non-negative int, got {getattr(self, name)!r}")
        if not (isinstance(self.lr, (int, float)) and self.lr > 0):
            raise ValueError(f"lr must be a positive number, got {self.lr!r}")
        for name in ("pack", "group_lengths"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be true or false, got {getattr(self, name)!r}")
        if not isinstance(self.pool, str):
            raise ValueError(f"pool must be a file name (a str; empty: no pool), got {self.pool!r}")
        if not (0 <= self.weight_decay and 0 <= self.min_lr_ratio <= 1 and self.grad_clip > 0):
            raise ValueError("weight_decay must be >= 0, min_lr_ratio in [0, 1], grad_clip > 0")
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {self.dtype!r}")


def lr_factor(step: int, cfg: TrainConfig) -> float:
    """Linear warmup to 1, then cosine down to min_lr_ratio at the last step."""
    if step < cfg.warmup:
        return (step + 1) / cfg.warmup
    progress = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
    return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))


def masked_loss(model, tokens: torch.Tensor, loss_mask: torch.Tensor, total: int | None = None,
                seq_idx: torch.Tensor | None = None) -> torch.Tensor:
    """Cross-entropy of tokens[:, j] from tokens[:, :j] summed over positions where loss_mask[:, j],
    over `total` (default: their number, i.e. the mean). A data-parallel rank passes the whole batch's
    count, so the ranks' losses add up to the batch's mean. Packed rows (`pack_rows`): seq_idx (B, T)
    like tokens. (device_masked_loss: the same value without reading anything back to the host.)"""
    logits = model(tokens[:, :-1]) if seq_idx is None else model(tokens[:, :-1], seq_idx[:, :-1].contiguous())
    target, mask = tokens[:, 1:], loss_mask[:, 1:]
    count = int(mask.sum())
    total = count if total is None else total
    if total <= 0:
        raise ValueError("loss_mask marks no model token to learn from (after the first position)")
    if count == 0:  # this rank's rows have nothing to learn: a zero that keeps the graph
        return logits.sum() * 0.0
    logits = logits[mask]  # bf16 under autocast: the loss is taken in float32 (float64 stays)
    loss = F.cross_entropy(logits.to(torch.promote_types(logits.dtype, torch.float32)), target[mask])
    # The mean times count / total: the same bits as the plain mean when total == count (one process).
    return loss if total == count else loss * (count / total)


def device_masked_loss(model, tokens: torch.Tensor, loss_mask: torch.Tensor,
                       seq_idx: torch.Tensor | None = None) -> torch.Tensor:
    """masked_loss's value with nothing read back to the host and no shape that depends on the data,
    so that a CUDA graph can capture it (graphed_step.py): the cross-entropy at every position, kept
    where loss_mask (torch.where, not an index) and summed, over the count of those positions taken
    on the device (at least 1: a batch with nothing to learn gives 0, where masked_loss raises; the
    graphed step checks that on the host before a batch goes in). The tokens are not checked either
    (`forward_unchecked`). The same value as masked_loss up to the order of the sum."""
    logits = model.forward_unchecked(tokens[:, :-1], None if seq_idx is None else seq_idx[:, :-1].contiguous())
    target, mask = tokens[:, 1:], loss_mask[:, 1:]
    logits = logits.reshape(-1, logits.shape[-1])
    losses = F.cross_entropy(logits.to(torch.promote_types(logits.dtype, torch.float32)), target.reshape(-1),
                             reduction="none")
    kept = torch.where(mask.reshape(-1), losses, 0.0).sum()
    return kept / mask.sum(dtype=kept.dtype).clamp_min(1)


def aligned_width(width: int, multiple: int) -> int:
    """The least row width >= `width` whose model input (width - 1 positions) is a multiple of
    `multiple`. On a GPU rows are aligned so (multiple 8): 16-byte rows in bf16, for which the scan
    kernels use 128-bit loads and cuBLAS its aligned GEMM kernels, which a seqlen like 215 denies them."""
    return width + (-(width - 1) % multiple)


def pad_batch(tokens: torch.Tensor, loss_mask: torch.Tensor, multiple: int):
    """Right-pads a batch with PAD (loss mask off) to `aligned_width`. The loss is unchanged: every
    model is causal, so positions after a trajectory's end affect nothing before them, and they are
    not learned."""
    extra = aligned_width(tokens.shape[1], multiple) - tokens.shape[1]
    if extra == 0:
        return tokens, loss_mask
    return (F.pad(tokens, (0, extra), value=V.PAD), F.pad(loss_mask, (0, extra), value=False))


# Padded rows are trained in length groups: sorted longest first, a new group starts at the first
# episode shorter than GROUP_FRACTION of its group's longest if that saves at least GROUP_MIN_SAVING
# of the padded batch's positions (the episodes left padded to it, not to the group's longest), at
# most MAX_GROUPS groups (the last takes the rest). An episode pads to at most 1/GROUP_FRACTION of
# its length but where a group would not be worth its call: each group is one more forward and
# backward pass, whose fixed cost the saving must outweigh; a batch of similar lengths stays one
# group, the padded batch of before. Chosen by measuring a tiny Pythia (attention: partly quadratic
# in the length) and LSTM (linear) on the cpu recipes' batches against other fractions, savings and
# caps (results/tasks_notes.md, "Length-grouped batches for the padded models (session 12)").
GROUP_FRACTION = 0.75
GROUP_MIN_SAVING = 0.05
MAX_GROUPS = 8


def length_groups(lengths) -> list[list[int]]:
    """The episodes (indices into `lengths`) of a padded batch in length groups (GROUP_FRACTION,
    GROUP_MIN_SAVING, MAX_GROUPS): each group sorted longest first (ties in batch order), the
    groups longest first."""
    lengths = [int(n) for n in lengths]
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    padded = len(lengths) * lengths[order[0]]
    groups = [[order[0]]]
    for k, i in enumerate(order[1:], 1):
        longest = lengths[groups[-1][0]]
        saved = (longest - lengths[i]) * (len(order) - k)
        if lengths[i] < GROUP_FRACTION * longest and saved >= GROUP_MIN_SAVING * padded and len(groups) < MAX_GROUPS:
            groups.append([])
        groups[-1].append(i)
    return groups


def padded_groups(tokens: torch.Tensor, loss_mask: torch.Tensor, lengths: torch.Tensor, multiple: int,
                  group: bool = True) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The episodes of a padded batch (row i: its first lengths[i] tokens) in `length_groups` (with
    `group`; else one group in batch order), each padded to its own longest as pad_batch aligns:
    a list of (tokens, loss_mask). Their `masked_loss`es over the whole batch's learned count add up
    to the padded batch's loss, and so do their gradients."""
    groups = length_groups(lengths) if group else [list(range(len(lengths)))]
    parts = []
    for rows in groups:
        longest = int(lengths[rows].max())
        parts.append(pad_batch(tokens[rows, :longest], loss_mask[rows, :longest], multiple))
    return parts


# Packed rows hold up to this many of the batch's longest episode: on the training batches of addition
# (1..5 digits) and multiplication_nx2 (1..10) at batch 128, first fit decreasing then fills ~97% of
# the positions with real tokens, against ~71% / 67% padded to the longest and ~75% / 87% in rows of
# one longest episode (most episodes are longer than half the longest, so few pairs fit one).
PACK_EPISODES = 4


def pack_batch(tokens: torch.Tensor, loss_mask: torch.Tensor, lengths: torch.Tensor, multiple: int):
    """`pack_rows` into rows of PACK_EPISODES longest episodes, aligned as pad_batch aligns."""
    return pack_rows(tokens, loss_mask, lengths, PACK_EPISODES * int(lengths.max()), multiple)


def pack_rows(tokens: torch.Tensor, loss_mask: torch.Tensor, lengths: torch.Tensor, width: int, multiple: int = 1):
    """Packs the episodes of a padded batch (row i: its first lengths[i] tokens) into rows of at most
    `width` tokens, first fit decreasing (ties in batch order), for a model that takes packed rows;
    the rows come out as wide as the fullest, `aligned_width` to `multiple`.
    Returns (tokens, loss_mask, seq_idx): PAD after a row's last episode, seq_idx (int32) the
    episode's place in its row (the padding one more). An episode's first token is never learned,
    so nothing is learned across a boundary: the loss and its gradient are those of the padded
    batch, position for position (models/base.py: each sequence as if it had its own row)."""
    lengths = [int(n) for n in lengths]
    if max(lengths) > width:
        raise ValueError(f"width {width} is shorter than the longest episode ({max(lengths)} tokens)")
    rows, free = [], []
    for i in sorted(range(len(lengths)), key=lambda i: -lengths[i]):
        r = next((r for r, f in enumerate(free) if f >= lengths[i]), len(rows))
        if r == len(rows):
            rows.append([])
            free.append(width)
        rows[r].append(i)
        free[r] -= lengths[i]
    width = aligned_width(width - min(free), multiple)
    out = torch.full((len(rows), width), V.PAD, dtype=tokens.dtype)
    mask = torch.zeros((len(rows), width), dtype=torch.bool)
    seq_idx = torch.zeros((len(rows), width), dtype=torch.int32)
    for r, episodes in enumerate(rows):
        pos = 0
        for s, i in enumerate(episodes):
            n = lengths[i]
            out[r, pos:pos + n] = tokens[i, :n]
            mask[r, pos + 1:pos + n] = loss_mask[i, 1:n]
            seq_idx[r, pos:pos + n] = s
            pos += n
        seq_idx[r, pos:] = len(episodes)
    return out, mask, seq_idx


def param_groups(model, weight_decay: float):
    """No decay on norms, biases, embeddings and the SSM's A_log / D (as in mamba_ssm)."""
    decay, no_decay = [], []
    for p in model.parameters():
        (no_decay if p.dim() < 2 or getattr(p, "_no_weight_decay", False) or p is model.embedding.weight
         else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def model_config(name: str, scale: str | dict, overrides: dict | None = None) -> dict:
    """The model of a run: model `name` at size preset `scale` (or the sizes themselves, a dict) with
    `overrides`, on the vocabulary."""
    sizes = preset(name, scale) if isinstance(scale, str) else scale
    return {"vocab_size": V.VOCAB_SIZE, **sizes, **(overrides or {})}


def train_config(config: dict, train: dict) -> TrainConfig:
    """The recipe of a run: `train` over the TrainConfig defaults, training sizes up to the
    experiment config's [sizes] train maximum unless `train` says otherwise."""
    return TrainConfig(**{"train_max_size": config["sizes"]["train"][1], **train})


def make_trainer(config: dict, model: str, scale: str | dict, train: dict, out_dir, *, model_overrides: dict | None = None,
                 device: str = "cpu", progress: bool = True) -> "Trainer":
    """The Trainer of one run of an experiment config (`ssm-tools train` and `reproduce` both):
    `model` at size preset `scale`, the recipe `train_config(config, train)`, the checkpoint and log
    in `out_dir`. The checkpoint records the config's [task], [sizes] and [eval] for `evaluate`."""
    return Trainer(make_task(config), model, model_config(model, scale, model_overrides), train_config(config, train),
                   out_dir, device=device, progress=progress, select_task=make_eval_task(config),
                   run_info={k: config.get(k, {}) for k in ("task", "sizes", "eval")})


class Trainer:
    """Owns a model, its optimizer and the data stream of one task; `run()` trains to cfg.steps."""

    def __init__(self, task, model_name: str, model_cfg: dict, cfg: TrainConfig, out_dir, *,
                 device: str = "cpu", run_info: dict | None = None, progress: bool = True, select_task=None):
        """run_info: what evaluation needs later, stored in the checkpoint as "run": the config's
        [task] table ("task"), and optionally its "sizes" and "eval" tables. select_task: the task
        checkpoint selection grades (default `task`; the graded task of a mixture)."""
        # Under torchrun this joins the process group and takes the local rank's GPU.
        self.task, self.cfg, self.progress = task, cfg, progress
        self.device = torch.device(distributed.setup(str(device)))
        self.out = Path(out_dir)
        self.meta = {"model": model_name, "model_cfg": dict(model_cfg), "run": run_info or {},
                     "train": asdict(cfg)}
        self.rank, self.world = distributed.world()
        if cfg.batch_size < self.world:
            raise ValueError(f"batch_size {cfg.batch_size} is smaller than the {self.world} processes")
        torch.manual_seed(cfg.seed)
        self.model = build_model(model_name, **model_cfg).to(self.device, DTYPES[cfg.dtype])
        # `ddp` is what the loss runs through (it averages gradients over the ranks); `model` is the
        # module itself, for checkpoints and evaluation.
        # The ranks may run different numbers of forward passes a step (length groups): no buffers
        # broadcast in the forward (the models have none to train; a collective there would hang).
        self.ddp = self.model if self.world == 1 else DistributedDataParallel(
            self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None,
            broadcast_buffers=False)
        self.opt = torch.optim.AdamW(param_groups(self.model, cfg.weight_decay), lr=cfg.lr,
                                     betas=(0.9, 0.95))
        self.sched = torch.optim.lr_scheduler.LambdaLR(self.opt, lambda s: lr_factor(s, cfg))
        self.rng = np.random.default_rng(cfg.seed)
        self.pool = None
        if cfg.pool:  # checked against the run's task and training range, recorded in the checkpoint
            self.pool = pool.load(cfg.pool)
            self.pool.check(self.meta["run"].get("task"), cfg.train_max_size)
            self.meta["pool"] = self.pool.identity()
        self.step = 0
        # Carried through checkpoints, so a run resumed across processes reports its whole training.
        self.train_seconds = 0.0  # training time of every run() so far (checkpoint writes excluded)
        self.last_loss: float | None = None  # the loss of the last step taken
        # Checkpoint selection (cfg.select_size): every scored step as [step, exact share, token
        # accuracy], the best step, and its weights (on the CPU).
        self.select_task = task if select_task is None else select_task
        self.selection: dict = {"scores": [], "best_step": None}
        self.selected_state: dict | None = None

    # -- checkpoints ---------------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {**self.meta, "step": self.step, "train_seconds": self.train_seconds, "last_loss": self.last_loss,
                "model_state": self.model.state_dict(), "selection": self.selection,
                **({"selected_state": self.selected_state} if self.selected_state is not None else {}),
                "optimizer": self.opt.state_dict(), "scheduler": self.sched.state_dict(),
                "rng": {"numpy": self.rng.bit_generator.state, "torch": torch.get_rng_state(),
                        # this process's GPU only: another rank's would start a CUDA context there
                        "cuda": [torch.cuda.get_rng_state(self.device)] if self.device.type == "cuda" else []}}

    def save(self) -> Path | None:
        """Writes the checkpoint (rank 0 only: every rank holds the same state); returns its path."""
        if self.rank != 0:
            return None
        self.out.mkdir(parents=True, exist_ok=True)
        return checkpoint.save(self.state_dict(), self.out / CHECKPOINT)  # atomic

    def load(self, path) -> dict:
        """Restores the run from a checkpoint; returns the recipe (TrainConfig fields) it was trained
        with, which may differ from this trainer's (`ssm-tools train --resume --steps` extends a run)
        but in KEPT_ON_RESUME, which this trainer takes from it.
        Tensors and plain data only: a file holding more is refused unrun (ssm_tools.checkpoint)."""
        ck = checkpoint.load(path, map_location=self.device)
        if (ck["model"], ck["model_cfg"]) != (self.meta["model"], self.meta["model_cfg"]):
            raise ValueError(f"checkpoint {path} holds model {ck['model']} {ck['model_cfg']}, "
                             f"not {self.meta['model']} {self.meta['model_cfg']}")
        if ck.get("pool") != self.meta.get("pool"):
            raise ValueError(f"checkpoint {path} was trained from pool {ck.get('pool')}, not {self.meta.get('pool')}")
        self.model.load_state_dict(ck["model_state"])
        self.opt.load_state_dict(ck["optimizer"])
        self.sched.load_state_dict(ck["scheduler"])
        self.step = ck["step"]
        self.train_seconds, self.last_loss = ck.get("train_seconds", 0.0), ck.get("last_loss")
        self.selection = ck.get("selection", {"scores": [], "best_step": None})
        self.selected_state = ck.get("selected_state")
        found = recipe(ck)
        for name in KEPT_ON_RESUME:  # in place: the scheduler and the caller hold this cfg
            setattr(self.cfg, name, found[name])
        self.meta["train"] = asdict(self.cfg)
        self.rng.bit_generator.state = ck["rng"]["numpy"]
        # RNG states are CPU byte tensors, whatever map_location moved the rest of the checkpoint to.
        torch.set_rng_state(ck["rng"]["torch"].cpu())
        if ck["rng"]["cuda"] and self.device.type == "cuda":  # older checkpoints: one state per GPU
            torch.cuda.set_rng_state(ck["rng"]["cuda"][0].cpu(), self.device)
        return found

    def select(self) -> list:
        """Scores this step on the held-out episodes (cfg.select_size, seed VALIDATION_SEED, never the
        test ones) and keeps its weights if no earlier step scored as high. Returns the score
        [step, share of exact trajectories, token accuracy]."""
        r = exact_trajectory_size(self.model, self.select_task, self.cfg.select_size, self.cfg.select_n,
                                  seed=VALIDATION_SEED, device=self.device)
        score = [self.step, r["exact_trajectory"], r["token_accuracy"]]
        self.selection["scores"].append(score)
        if max(self.selection["scores"], key=lambda s: (s[1], s[2], -s[0])) is score:
            self.selection["best_step"] = self.step
            self.selected_state = {k: v.detach().to("cpu", copy=True) for k, v in self.model.state_dict().items()}
        return score

    def selected_model(self):
        """The run's model: the selected step's weights (a copy) under checkpoint selection, else the
        model as trained."""
        if self.selected_state is None:
            return self.model
        model = build_model(self.meta["model"], **self.meta["model_cfg"]).to(self.device, DTYPES[self.cfg.dtype])
        model.load_state_dict(self.selected_state)
        return model.eval()

    # -- training ------------------------------------------------------------------------------
    def batch(self):
        """This rank's rows of the next batch, on the device, as a list of parts (tokens, loss_mask,
        seq_idx), each a forward pass; the whole batch's token count and its count of learned
        positions (the loss's denominator). A model that takes packed rows gets the episodes packed
        (`pack_batch`, one part with their seq_idx); the others get them padded, one part per length
        group, each padded to its own longest (`padded_groups`; without cfg.group_lengths one part
        padded to the longest; seq_idx None). Rows are aligned on a GPU.
        The episodes come from the pool (drawn by the data RNG), else fresh from the task's oracle."""
        if self.pool is not None:
            tokens, mask, lengths = self.pool.episodes(self.pool.draw(self.rng, self.cfg.batch_size))
        else:
            sizes = [self.cfg.train_max_size] * self.cfg.batch_size
            transcript, _ = self.task.trajectories(self.rng, sizes, train=True)
            tokens, mask, lengths = transcript.tokens, transcript.loss_mask, transcript.lengths
        ntok, learned = int(lengths.sum()), int(mask[:, 1:].sum())
        if self.world > 1:  # episodes rank, rank + world, ...
            rows = slice(self.rank, None, self.world)
            tokens, mask, lengths = tokens[rows], mask[rows], lengths[rows]
        multiple = 8 if self.device.type == "cuda" else 1
        if self.model.packs_rows and self.cfg.pack:
            tokens, mask, seq_idx = pack_batch(tokens, mask, lengths, multiple)
            return [(tokens.to(self.device), mask.to(self.device), seq_idx.to(self.device))], ntok, learned
        return [(t.to(self.device), m.to(self.device), None)
                for t, m in padded_groups(tokens, mask, lengths, multiple, self.cfg.group_lengths)], ntok, learned

    def train_step(self) -> tuple[float, int]:
        """One optimizer step; returns (the batch's mean loss, tokens in the batch without padding).
        Each part of the batch is a forward and backward pass with the loss over the whole batch's
        learned count, so the gradients they add up to are the whole batch's."""
        parts, ntok, learned = self.batch()
        self.model.train()
        self.opt.zero_grad(set_to_none=True)
        loss = 0.0
        for k, (tokens, mask, seq_idx) in enumerate(parts):
            # DDP all-reduces in the last part's backward, the earlier parts' gradients included
            # (ranks may differ in their number of parts: each takes one such backward a step).
            last = k == len(parts) - 1
            with nullcontext() if self.world == 1 or last else self.ddp.no_sync():
                with torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.device.type == "cuda"):
                    part = masked_loss(self.ddp, tokens, mask, learned, seq_idx)
                (part * self.world).backward()  # DDP averages over the ranks: their sum is the batch's gradient
            loss = loss + part.detach()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.grad_clip)
        self.opt.step()
        self.sched.step()
        self.step += 1
        return distributed.all_sum([float(loss)], self.device)[0], ntok

    def fit_steps(self, steps: int) -> None:
        """Lowers the run's step count to `steps` (at least one more than taken, never more than
        cfg.steps), its warmup with it if needed; the checkpoint records the new recipe."""
        self.cfg.steps = max(self.step + 1, min(self.cfg.steps, steps))
        self.cfg.warmup = min(self.cfg.warmup, self.cfg.steps)
        self.meta["train"] = asdict(self.cfg)

    def run(self, max_seconds: float | None = None, fit_seconds: float | None = None) -> dict:
        """Train until cfg.steps; returns the last log row. `max_seconds` is a time budget: once a
        step ends past it, a checkpoint is written and training stops ("stopped": True in the row),
        to be resumed (`load`) by a later process, e.g. the next of several time-limited jobs.

        `fit_seconds` instead sizes the run to the time: the first steps of warmup (at most 20) are
        timed and cfg.steps is lowered (never raised) so that training ends about `fit_seconds` after
        it started. The warmup does not depend on the step count, so the run is the very run of a
        recipe with those steps from the start (recorded in the checkpoint), repeatable as such."""
        started = time.perf_counter()
        probe_steps = max(1, min(20, self.cfg.warmup))
        probe = self.step + probe_steps if fit_seconds is not None else None
        main = self.rank == 0  # writes the log and shows progress; the other ranks only train
        log_path = self.out / LOG
        new_log = not log_path.exists() or self.step == 0
        if main:
            self.out.mkdir(parents=True, exist_ok=True)
        if main and not new_log:  # rows written after the checkpoint we resumed from are redone: drop them
            with open(log_path, newline="") as f:
                rows = list(csv.reader(f))
            with open(log_path, "w", newline="") as f:
                csv.writer(f).writerows([rows[0]] + [r for r in rows[1:] if int(r[0]) <= self.step])
        row: dict = {}
        with open(log_path if main else os.devnull, "w" if new_log else "a", newline="") as f, \
                tqdm(total=self.cfg.steps, initial=self.step, disable=not (self.progress and main),
                     desc=f"train {self.meta['model']}", dynamic_ncols=True) as bar:
            writer = csv.writer(f)
            if new_log:
                writer.writerow(["step", "loss", "lr", "tokens_per_s", "eval", "select"])
            while self.step < self.cfg.steps:
                t0 = time.perf_counter()
                loss, ntok = self.train_step()
                tps = ntok / (time.perf_counter() - t0)
                self.last_loss = loss
                row = {"step": self.step, "loss": loss, "lr": self.sched.get_last_lr()[0], "tokens_per_s": tps}
                if main and self.cfg.eval_every and self.step % self.cfg.eval_every == 0:
                    row["eval"] = evaluate(self.model, self.task, self.cfg.eval_sizes, self.cfg.eval_n,
                                           device=self.device)["accuracy"]
                if main and self.cfg.select_size and (self.step % self.cfg.select_every == 0
                                                      or self.step == self.cfg.steps):
                    row["select"] = self.select()[1]
                writer.writerow([row["step"], f"{loss:.5f}", f"{row['lr']:.3e}", f"{tps:.0f}", row.get("eval", ""),
                                 row.get("select", "")])
                bar.set_postfix(loss=f"{loss:.4f}", tok_s=f"{tps:.0f}", **({"acc": row["eval"]} if "eval" in row else {}))
                bar.update(1)
                self.train_seconds += time.perf_counter() - t0
                if self.step == probe:
                    elapsed = time.perf_counter() - started
                    self.fit_steps(self.step + int((fit_seconds - elapsed) * probe_steps / elapsed))
                    bar.total = self.cfg.steps
                out_of_time = max_seconds is not None and time.perf_counter() - started > max_seconds
                if max_seconds is not None and self.world > 1:  # every rank stops at the same step
                    out_of_time = distributed.all_sum([float(out_of_time)], self.device)[0] > 0
                if self.step % self.cfg.ckpt_every == 0 or self.step == self.cfg.steps or out_of_time:
                    f.flush()
                    self.save()
                if out_of_time and self.step < self.cfg.steps:
                    return {**row, "stopped": True}
        return row


def recipe(ck: dict) -> dict:
    """The TrainConfig fields a checkpoint was trained with; those from before `dtype` were float32,
    those from before `pack` padded, those from before `pool` on fresh trajectories, those from
    before `group_lengths` padded to the batch's longest."""
    return {"dtype": "float32", "pack": False, "pool": "", "group_lengths": False, **ck["train"]}


# Recipe fields a resumed run takes from its checkpoint, whatever it was given: how a batch's
# gradient is computed, not what it is (the same up to float rounding), so that the run goes on bit
# for bit as it trained (`load`) and a recipe check (reproduce) does not refuse it for them.
KEPT_ON_RESUME = ("group_lengths",)


def resumed_recipe(wanted: dict, found: dict) -> dict:
    """The recipe `wanted` with the KEPT_ON_RESUME fields of a checkpoint's recipe `found`."""
    return {**wanted, **{k: found[k] for k in KEPT_ON_RESUME}}


def load_checkpoint(path, device: str = "cpu", weights: str = "selected"):
    """(model in eval mode, checkpoint metadata) from a checkpoint file, its run folder, or a
    save_pretrained model folder (whose config.json may carry "run" and "step"). `weights`: of a run
    trained with checkpoint selection, "selected" (the selected step's; its step is the metadata's
    "selected_step") or "last" (the last step's); other runs have the last step's only."""
    if weights not in ("selected", "last"):
        raise ValueError(f"weights must be 'selected' or 'last', got {weights!r}")
    path = Path(path)
    if is_pretrained(path):
        config = read_config(path)
        return load_pretrained(path, device), {"model": config["model"], "model_cfg": config["config"],
                                               "run": config["run"], "train": {}, "step": config["step"]}
    if path.is_dir():
        path = path / CHECKPOINT
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    ck = checkpoint.load(path, map_location=device)
    model = build_model(ck["model"], **ck["model_cfg"]).to(device, DTYPES[recipe(ck)["dtype"]])
    selected = weights == "selected" and "selected_state" in ck
    model.load_state_dict(ck["selected_state"] if selected else ck["model_state"])
    meta = {k: ck[k] for k in ("model", "model_cfg", "run", "train", "step")}
    return model.eval(), {**meta, **({"selected_step": ck["selection"]["best_step"]} if selected else {})}
