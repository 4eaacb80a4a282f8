"""The plan a config asks for as it stands, without a budget: what the engine runs and the planner starts from."""

from __future__ import annotations

from seqfit.config import RunCfg, lm_bptt
from seqfit.memory.batch_split import split_effective_batch
from seqfit.memory.estimate import DataInfo
from seqfit.memory.pool_plan import pools_window_buffers

__all__ = ["requested_plan", "plan_dict", "run_device"]


def run_device(cfg: RunCfg) -> str:
    """The device type the config trains on (cpu or cuda)."""
    from seqfit.device import resolve_device

    return resolve_device(cfg.memory.device).type


def requested_plan(cfg: RunCfg, data: DataInfo, device: str | None = None) -> dict:
    """The plan the config asks for as it stands (what the training engine uses), no budget."""
    from seqfit.models.heads import choose_loss_kind

    device = device or run_device(cfg)
    mem = cfg.memory
    micro, accumulate = split_effective_batch(cfg)
    loss = mem.loss if mem.loss != "auto" else choose_loss_kind(data.vocab_size, micro * lm_bptt(cfg.train), None)
    return plan_dict(device, mem.precision, loss, mem.loss_chunk, micro, accumulate, lm_bptt(cfg.train),
                 mem.checkpoint_time, cfg.train.optimizer, mem.spare_grads)


def plan_dict(device, precision, loss, loss_chunk, micro, accumulate, bptt, checkpoint_time, optimizer,
              spare_grads) -> dict:
    return {"device": device, "precision": precision, "loss": loss,
            "loss_chunk": loss_chunk if loss == "chunked" else 0, "micro_batch": micro, "accumulate": accumulate,
            "batch_size": micro * accumulate, "bptt": bptt,
            "checkpoint_time": checkpoint_time, "optimizer": optimizer,
            "buffer_pool": pools_window_buffers(device, checkpoint_time),
            # the embedding's and the chunked loss's gradients reuse the last step's memory (nn/spare_grads.py)
            "spare_grads": bool(spare_grads) and device == "cpu"}
