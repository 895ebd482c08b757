"""Trajectory pools: oracle trajectories built once, stored in one file, drawn by the Trainer.

A Trainer builds fresh oracle trajectories for every batch, which is free for the arithmetic tasks
and costly where an oracle runs programs (coding: several sandbox runs per episode). A pool is K
episodes of the training distribution (the Trainer's own draw: `task.trajectories(..., train=True)`
at the config's largest training size), built once on many threads (`build_pool`; the sandbox
releases the GIL) and saved as one .npz file (`save`, atomic); every run that trains with
`TrainConfig.pool` draws its batches from it (`Pool.draw`, with the Trainer's data RNG: seeded by the
run's seed and kept in its checkpoints, so a resumed run draws what the uninterrupted one would).

    ssm-tools pool --config coding --episodes 300 --out pool.npz
    ssm-tools train --config coding --pool pool.npz

File (numpy .npz, no pickled objects: it may come from someone else, so it is loaded with
allow_pickle=False and checked field by field, its digest included; a bad file is a ValueError
naming it):
    tokens     (N,) uint8   every episode's tokens, one after another (the vocabulary fits a byte)
    loss_mask  (N,) bool    True where the model emitted the token (Transcript.loss_mask)
    lengths    (K,) int64   each episode's token count
    meta       ()   str     JSON: format, task ([task] table), train_max_size, seed, episodes, digest
"""
from __future__ import annotations

import hashlib
import json
import os
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from . import vocab as V

FORMAT = "ssm-tools trajectory pool 1"
ARRAYS = {"tokens": np.uint8, "loss_mask": np.bool_, "lengths": np.int64}
META_KEYS = {"format", "task", "train_max_size", "seed", "episodes", "digest"}
# Episodes per replay while building: large, so that few threads wait on the chunk's longest
# oracle; fixed, so that the pool's content depends on (config, seed, episodes) alone, not on the
# threads that built it.
BUILD_CHUNK = 256
assert V.VOCAB_SIZE <= 256


def digest(tokens: np.ndarray, loss_mask: np.ndarray, lengths: np.ndarray, meta: dict) -> str:
    """sha256 of the arrays and the meta fields other than the digest itself (16 hex digits)."""
    h = hashlib.sha256(json.dumps({k: v for k, v in meta.items() if k != "digest"}, sort_keys=True).encode())
    for a in (tokens, loss_mask, lengths):
        h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()[:16]


@dataclass(frozen=True)
class Pool:
    tokens: np.ndarray
    loss_mask: np.ndarray
    lengths: np.ndarray
    meta: dict

    def __len__(self) -> int:
        return len(self.lengths)

    def identity(self) -> dict:
        """What a run records of the pool it trained from: its meta (digest included) and size."""
        return {**{k: self.meta[k] for k in sorted(META_KEYS - {"format"})}, "tokens": len(self.tokens)}

    def check(self, task: dict | None, train_max_size: int) -> None:
        """A run of config [task] `task` training up to `train_max_size` may draw from this pool."""
        if task != self.meta["task"]:
            raise ValueError(f"pool: built for task {self.meta['task']}, not this run's {task}")
        if train_max_size != self.meta["train_max_size"]:
            raise ValueError(f"pool: built from training sizes up to {self.meta['train_max_size']}, but the run "
                             f"trains up to {train_max_size} (train_max_size)")

    def draw(self, rng: np.random.Generator, batch_size: int) -> np.ndarray:
        """The episodes of a batch: `batch_size` of them drawn uniformly by `rng`, all different
        while the pool has that many."""
        return rng.choice(len(self), size=batch_size, replace=batch_size > len(self))

    def episodes(self, indices) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(tokens (B, T) int64 PAD after each episode, loss_mask (B, T) bool, lengths (B,) int64)
        of these episodes, like a Transcript of them."""
        offsets = np.concatenate([[0], np.cumsum(self.lengths)])
        lengths = self.lengths[indices]
        tokens = torch.full((len(indices), int(lengths.max())), V.PAD, dtype=torch.int64)
        mask = torch.zeros(tokens.shape, dtype=torch.bool)
        for row, (i, n) in enumerate(zip(indices, lengths)):
            tokens[row, :n] = torch.from_numpy(self.tokens[offsets[i]:offsets[i] + n].astype(np.int64))
            mask[row, :n] = torch.from_numpy(self.loss_mask[offsets[i]:offsets[i] + n])
        return tokens, mask, torch.from_numpy(lengths.copy())


def build_pool(config: dict, episodes: int, seed: int = 0, train_max_size: int | None = None, threads: int = 0,
               progress: bool = False, max_seconds: float | None = None) -> Pool:
    """`episodes` oracle trajectories of the config's task (`load_config`'s dict), drawn as the
    Trainer draws them (sizes up to `train_max_size`, default the config's largest training size),
    from `seed`; oracles and replay on `threads` threads (0: one per core). With `max_seconds`, the
    build ends after the chunk of BUILD_CHUNK episodes that ends past that time: a pool of fewer
    episodes (a call of fixed length keeps its time for training), the first ones of the whole pool."""
    from tqdm import tqdm

    from .config import make_task

    if not (isinstance(episodes, int) and not isinstance(episodes, bool) and episodes > 0):
        raise ValueError(f"episodes must be a positive integer, got {episodes!r}")
    if max_seconds is not None and not max_seconds > 0:
        raise ValueError(f"max_seconds must be positive, got {max_seconds!r}")
    if not (isinstance(threads, int) and threads >= 0):
        raise ValueError(f"threads must be a non-negative integer (0: one per core), got {threads!r}")
    task = make_task(config)
    train_max_size = task.check_size(config["sizes"]["train"][1] if train_max_size is None else train_max_size,
                                     "train_max_size")
    threads = threads or os.cpu_count() or 1
    rng = np.random.default_rng(seed)
    tokens, masks, lengths = [], [], []
    started = time.perf_counter()
    with tqdm(total=episodes, desc=f"pool {task.name} ({task.mode})", disable=not progress, dynamic_ncols=True) as bar:
        for start in range(0, episodes, BUILD_CHUNK):
            n = min(BUILD_CHUNK, episodes - start)
            transcript, _ = task.trajectories(rng, [train_max_size] * n, train=True, num_threads=threads)
            valid = torch.arange(transcript.tokens.shape[1]) < transcript.lengths[:, None]
            tokens.append(transcript.tokens[valid].numpy().astype(np.uint8))
            masks.append(transcript.loss_mask[valid].numpy())
            lengths.append(transcript.lengths.numpy().astype(np.int64))
            bar.update(n)
            if max_seconds is not None and time.perf_counter() - started > max_seconds:
                break
    arrays = (np.concatenate(tokens), np.concatenate(masks), np.concatenate(lengths))
    meta = {"format": FORMAT, "task": config["task"], "train_max_size": train_max_size, "seed": seed,
            "episodes": len(arrays[2])}
    return Pool(*arrays, {**meta, "digest": digest(*arrays, meta)})


def save(pool: Pool, path) -> Path:
    """Writes the pool to `path` (.npz, compressed) atomically; returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        np.savez_compressed(f, tokens=pool.tokens, loss_mask=pool.loss_mask, lengths=pool.lengths,
                            meta=np.array(json.dumps(pool.meta, sort_keys=True)))
    os.replace(tmp, path)
    return path


def load(path) -> Pool:
    """The pool in file `path`, every field checked (ValueError naming the file and what is wrong)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"pool file not found: {path}")

    def bad(why: str) -> ValueError:
        return ValueError(f"{path} is not a valid trajectory pool: {why}")

    if not zipfile.is_zipfile(path):  # np.load would take it for a pickle (and refuse it)
        raise bad("not a .npz file (a zip archive of arrays)")
    try:
        with np.load(path, allow_pickle=False) as npz:
            files = set(npz.files)
            arrays = {k: npz[k] for k in files & (set(ARRAYS) | {"meta"})}
    except (zipfile.BadZipFile, OSError, EOFError) as e:
        raise bad(f"not a readable .npz file ({e})") from None
    except ValueError as e:  # object arrays refused (allow_pickle=False), corrupt members
        raise bad(str(e)) from None
    if files != set(ARRAYS) | {"meta"}:
        raise bad(f"it holds {sorted(files)}, not {sorted(set(ARRAYS) | {'meta'})}")
    for name, dtype in ARRAYS.items():
        if arrays[name].dtype != dtype or arrays[name].ndim != 1:
            raise bad(f"{name} must be a 1-D {np.dtype(dtype)} array, got {arrays[name].ndim}-D {arrays[name].dtype}")
    if arrays["meta"].dtype.kind != "U" or arrays["meta"].ndim != 0:
        raise bad("meta must be one string (JSON)")
    try:
        meta = json.loads(str(arrays["meta"]))
    except json.JSONDecodeError as e:
        raise bad(f"meta is not JSON ({e})") from None
    if not (isinstance(meta, dict) and set(meta) == META_KEYS and meta["format"] == FORMAT
            and isinstance(meta["task"], dict) and type(meta["train_max_size"]) is int):
        raise bad(f"meta must be a JSON object with keys {sorted(META_KEYS)}, format {FORMAT!r}, a task table "
                  f"and an integer train_max_size")
    tokens, loss_mask, lengths = (arrays[k] for k in ARRAYS)
    if not (len(lengths) == meta["episodes"] and len(lengths) > 0 and lengths.min() > 1
            and int(lengths.sum()) == len(tokens) == len(loss_mask)):
        raise bad(f"{len(lengths)} episodes (meta: {meta['episodes']}) of lengths summing to {int(lengths.sum())}, "
                  f"{len(tokens)} tokens and {len(loss_mask)} mask entries")
    if tokens.max() >= V.VOCAB_SIZE:
        raise bad(f"token id {int(tokens.max())} is outside the vocabulary (< {V.VOCAB_SIZE})")
    if digest(tokens, loss_mask, lengths, meta) != meta["digest"]:
        raise bad("its digest does not match its content (altered or corrupt)")
    return Pool(tokens, loss_mask, lengths, meta)


def ensure(path, config: dict, episodes: int, seed: int = 0, train_max_size: int | None = None, threads: int = 0,
           progress: bool = False, max_seconds: float | None = None) -> Pool:
    """The pool at `path` if there is one, which must be a pool these arguments build (e.g. left
    by an earlier call of the same command, whose stopped runs resume from it: of the same task,
    seed and sizes, at most `episodes`); else build_pool's, saved there."""
    path = Path(path)
    if not path.is_file():
        built = build_pool(config, episodes, seed, train_max_size, threads, progress, max_seconds)
        save(built, path)
        return built
    found = load(path)
    wanted = {"task": config["task"], "seed": seed,
              "train_max_size": config["sizes"]["train"][1] if train_max_size is None else train_max_size}
    if {k: found.meta[k] for k in wanted} != wanted or found.meta["episodes"] > episodes:
        raise ValueError(f"{path} holds a pool of {found.meta['episodes']} episodes of "
                         f"{({k: found.meta[k] for k in wanted})}, not of {wanted} (at most {episodes} episodes): "
                         f"remove it to build that one")
    return found
