"""torchrun support: process group setup (gloo on CPU, NCCL on GPU), rank helpers, sharded sample order, and
the model wrapping of `train.distributed`: DDP (a full replica per rank) or FSDP (FSDP2 `fully_shard`: each decoder
layer and each vision layer is its own shard group, the rest is the root group).

FSDP keeps the trainer's code path: the wrapped object is called like the model and has DDP's `no_sync()`;
parameters keep their names (DTensors), so per-module parameter groups, gradient clipping and AdamW work unchanged.
Checkpoints stay plain: `gather_for_save` collects the full weights and the full optimizer state (keyed by
parameter name) on rank 0, `load_optimizer_state` shards such a state again on resume, and `unwrap_model` turns
the sharded model back into a plain one with the full weights on every rank at the end of a stage.
"""
from __future__ import annotations

import contextlib
import copy
import os
from typing import Any, Optional

import torch
import torch.distributed as dist
from torch import nn

from vlkit.config import ConfigError


def setup() -> tuple[int, int, torch.device]:
    """Initializes the process group when launched by torchrun; returns (rank, world_size, device)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend)
    rank = dist.get_rank() if dist.is_initialized() else 0
    if torch.cuda.is_available():
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        device = torch.device("cuda", local)
    else:
        device = torch.device("cpu")
    return rank, world, device


def resolve_precision(precision: str, device: torch.device) -> str:
    """`auto` -> bf16 where bf16 math is fast (CUDA with bf16 support; a CPU with AVX512-BF16 or AMX), else
    fp32: on a CPU without them bf16 autocast is several times slower than fp32."""
    if precision != "auto":
        return precision
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    fast = [getattr(torch.cpu, name, lambda: False) for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]
    return "bf16" if any(f() for f in fast) else "fp32"


def is_main() -> bool:
    return not dist.is_initialized() or dist.get_rank() == 0


def all_reduce_sum(value: float, device: torch.device) -> float:
    if not dist.is_initialized():
        return value
    t = torch.tensor([value], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return float(t.item())


def all_reduce_sums(values: dict[str, float], device: torch.device) -> dict[str, float]:
    """Each value summed over ranks, in one collective (the same keys on every rank)."""
    if not dist.is_initialized():
        return dict(values)
    keys = sorted(values)
    t = torch.tensor([values[k] for k in keys], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return dict(zip(keys, t.tolist()))


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def cleanup() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


# ---------------------------------------------------------------------------------------------------------
# DDP / FSDP


def wrap_model(model: nn.Module, strategy: str, device: torch.device, find_unused: bool = False,
               precision: str = "fp32") -> Any:
    """The object the training loop calls: `model` itself in a single process, else DDP(model) or, for
    strategy="fsdp", `model` sharded in place with FSDP2 behind an `FSDPRunner`. bf16 precision on CUDA gives FSDP
    bf16 parameters for compute with fp32 gradient reduction (the sharded master weights stay fp32)."""
    if strategy not in ("ddp", "fsdp"):
        raise ConfigError(f"train.distributed={strategy!r} is not allowed; choose one of ['ddp', 'fsdp']")
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return model
    if strategy == "ddp":
        from torch.nn.parallel import DistributedDataParallel as DDP

        return DDP(model, find_unused_parameters=find_unused)
    # FSDP2 needs no find_unused: a parameter without a gradient is simply not reduced
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    if any("lora_" in name for name, _ in model.named_parameters()):
        raise ConfigError("LoRA stages cannot run under train.distributed=fsdp (the adapters are merged into "
                          "plain weights at the stage end); use ddp for them")
    if not hasattr(model, "cfg"):
        raise ConfigError(f"train.distributed=fsdp needs a vlkit VisionLanguageModel, got {type(model).__name__}")
    kwargs: dict = {}
    if precision == "bf16" and device.type == "cuda":
        kwargs["mp_policy"] = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
    for layer in shard_units(model):
        fully_shard(layer, **kwargs)
    fully_shard(model, **kwargs)  # the root: embeddings, connector, final norm, LM head
    return FSDPRunner(model)


def shard_units(model: nn.Module) -> list[nn.Module]:
    """FSDP shard groups below the root: every decoder layer and every vision-encoder layer."""
    units = list(getattr(getattr(model, "language", None), "layers", []))
    encoder = getattr(getattr(model, "vision", None), "encoder", None)
    return units + list(getattr(encoder, "layers", []))


class FSDPRunner:
    """Calls an FSDP2-sharded model, and gives it DDP's `no_sync()` (gradient accumulation without reduction;
    FSDP2 spells it `set_requires_gradient_sync`)."""

    def __init__(self, module: nn.Module):
        self.module = module

    def __call__(self, *args, **kwargs):
        return self.module(*args, **kwargs)

    @contextlib.contextmanager
    def no_sync(self):
        self.module.set_requires_gradient_sync(False)
        try:
            yield
        finally:
            self.module.set_requires_gradient_sync(True)


def is_fsdp(model: nn.Module) -> bool:
    if not dist.is_available():
        return False
    from torch.distributed.fsdp import FSDPModule

    return isinstance(model, FSDPModule)


def _options(rank0_only: bool):
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    # full_state_dict: unsharded tensors; cpu_offload: gathered to rank 0's CPU memory only
    return StateDictOptions(full_state_dict=True, cpu_offload=rank0_only)


def plain_copy(model: nn.Module, state: dict, device: torch.device | str) -> nn.Module:
    """A plain (unsharded) module of `model`'s class and config holding `state` (the full state dict). Built on the
    meta device, so no throw-away initialisation; tied parameters are tied again and buffers that are not in the
    state dict (RoPE frequencies, ...) are copied from `model`."""
    from torch.distributed.fsdp import FSDPModule

    base = next(c for c in type(model).__mro__ if not issubclass(c, FSDPModule))
    with torch.device("meta"):
        plain = base(model.cfg)
    first: dict[int, str] = {}
    aliases: list[tuple[str, str]] = []  # (alias, first name) of parameters shared between modules
    for name, p in plain.named_parameters(remove_duplicate=False):
        if id(p) in first:
            aliases.append((name, first[id(p)]))
        else:
            first[id(p)] = name
    plain.load_state_dict({k: v.to(device) for k, v in state.items()}, assign=True)
    for alias, name in aliases:
        owner, _, attr = alias.rpartition(".")
        setattr(plain.get_submodule(owner), attr, plain.get_parameter(name))
    persistent = set(plain.state_dict())
    for name, buf in model.named_buffers():
        if name not in persistent:
            owner, _, attr = name.rpartition(".")
            setattr(plain.get_submodule(owner), attr, buf.detach().to(device).clone())
    flags = {name: p.requires_grad for name, p in model.named_parameters()}
    for name, p in plain.named_parameters():
        p.requires_grad_(flags.get(name, p.requires_grad))
    return plain.train(model.training)


def gather_for_save(pipe: Any, optimizer: Optional[torch.optim.Optimizer]) -> tuple[Any, dict]:
    """(pipeline, optimizer state dict) for rank 0 to write into a checkpoint. With a plain or DDP model: the
    pipeline itself and `optimizer.state_dict()`. With an FSDP model this is a collective (every rank must call
    it): rank 0 gets a shallow copy of the pipeline whose model is a plain CPU module with the full weights, and the
    full optimizer state keyed by parameter name (what `load_optimizer_state` expects); the other ranks get
    (None, {})."""
    model = pipe.model
    if not is_fsdp(model):
        return pipe, (optimizer.state_dict() if optimizer is not None and is_main() else {})
    from torch.distributed.checkpoint.state_dict import get_model_state_dict, get_optimizer_state_dict

    state = get_model_state_dict(model, options=_options(rank0_only=True))
    opt_state = {} if optimizer is None else get_optimizer_state_dict(model, optimizer, options=_options(True))
    if not is_main():
        return None, {}
    out = copy.copy(pipe)
    out.model = plain_copy(model, state, "cpu")
    return out, opt_state


def unwrap_model(model: nn.Module) -> nn.Module:
    """An FSDP-sharded model as a plain module with the full weights on every rank (on the device it trained on);
    any other model as it is. A collective for FSDP."""
    if not is_fsdp(model):
        return model
    from torch.distributed.checkpoint.state_dict import get_model_state_dict

    state = get_model_state_dict(model, options=_options(rank0_only=False))
    device = next(iter(state.values())).device if state else torch.device("cpu")
    return plain_copy(model, state, device)


def load_optimizer_state(model: nn.Module, optimizer: torch.optim.Optimizer, state: dict) -> None:
    """Restore a checkpoint's optimizer state: `optimizer.load_state_dict`, or for an FSDP model the full state
    (as `gather_for_save` wrote it, read by every rank) sharded like the parameters."""
    groups = state.get("param_groups") or [{}]
    named = isinstance(next(iter(groups[0].get("params") or [0])), str)  # FSDP states are keyed by name
    if named != is_fsdp(model):
        from vlkit.errors import CheckpointError

        saved, now = ("an FSDP", "a single-process or DDP") if named else ("a single-process or DDP", "an FSDP")
        raise CheckpointError(f"the checkpoint's optimizer state comes from {saved} run and cannot resume {now} "
                              f"run; resume with the train.distributed setting (and process count) it was saved with")
    if not is_fsdp(model):
        optimizer.load_state_dict(state)
        return
    from torch.distributed.checkpoint.state_dict import set_optimizer_state_dict

    set_optimizer_state_dict(model, optimizer, state, options=_options(rank0_only=False))
