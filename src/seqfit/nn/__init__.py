"""Tensor-level building blocks, usable in any PyTorch training loop.

    LSTM, GRU, RNN                drop-ins for torch.nn's, plus checkpoint_time=k (exact time-chunked
                                  checkpointing) and forward(x, hx, lengths=...) (fused variable lengths)
    chunked_cross_entropy         F.cross_entropy(hidden @ weight.T + bias, targets) without the (N, V) logits
    ChunkedCrossEntropy           the same as a module
    SpareGradEmbedding, hand_back_grads   an nn.Embedding whose weight gradient reuses the last step's memory
                                  on CPU: call hand_back_grads(model) before optimizer.zero_grad()
    make_precision, Precision     autocast + GradScaler behind one interface (fp32, bf16, fp16)
    make_optimizer, optimizer_state_bytes   optimizers and the bytes of their state

The modules below (recurrent stack, time chunking, losses) are what seqfit's own models are made of.
"""

from seqfit.nn.chunked_loss import ChunkedCrossEntropy, chunked_cross_entropy
from seqfit.nn.embedding import SpareGradEmbedding
from seqfit.nn.optim import make_optimizer, optimizer_state_bytes
from seqfit.nn.precision import Precision, make_precision
from seqfit.nn.rnn import GRU, LSTM, RNN
from seqfit.nn.spare_grads import hand_back as hand_back_grads

__all__ = ["LSTM", "GRU", "RNN", "chunked_cross_entropy", "ChunkedCrossEntropy", "make_precision", "Precision",
           "make_optimizer", "optimizer_state_bytes", "SpareGradEmbedding", "hand_back_grads"]
