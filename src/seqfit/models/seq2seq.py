"""Encoder-decoder with attention: source ids -> recurrent encoder -> attentive recurrent decoder -> target ids.

    encoder     embedding -> RecurrentStack (bidirectional: the two directions split --hidden, so its
                outputs and final states have the decoder's size and bridge by concatenation)
    decoder     step t reads the previous target token's embedding (and, with input feeding, the previous
                attentional output h~), then attends over the encoder outputs:
                    score(h_t, s_j)   dot: h.s   general: h.W s   additive: v.tanh(W s + U h + b)
                    c_t = sum_j softmax(score)_j s_j,      h~_t = tanh(W_c [c_t; h_t])     (Luong et al. 2015)
    output      h~ (after dropout) -> the vocabulary head of the language model (full or chunked loss), so
                no batch x target length x vocabulary logits exist with the chunked loss

Teacher forcing: the decoder input is <eos> followed by the target (as fairseq, <eos> starts a sentence),
the expected output is the target followed by <eos>. Without input feeding the decoder is one fused call
over the whole target and attention is one batched product; with it, the decoder steps in Python.
--checkpoint-time k checkpoints both the encoder and the decoder every k steps (exact: same gradients).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from seqfit.config import ModelCfg
from seqfit.errors import SeqfitError
from seqfit.models.heads import make_output_head
from seqfit.nn.recurrent import RecurrentStack, State
from seqfit.nn.timechunk import resolve_chunk

__all__ = ["Seq2Seq", "Attention", "EncoderMemory", "DecoderState", "select_state"]


def select_state(state: State, rows: Tensor) -> State:
    """The rows of a recurrent state (each tensor (layers or directions, B, H)), e.g. a beam's survivors."""
    return [tuple(t.index_select(1, rows) for t in s) if isinstance(s, tuple) else s.index_select(1, rows)
            for s in state]


@dataclass
class EncoderMemory:
    values: Tensor  # (B, S, H) encoder outputs (zero at padding)
    keys: Tensor  # (B, S, H) what queries are scored against: the values, or their projection (computed once)
    mask: Tensor  # (B, S) bool, True at real source tokens

    def select(self, rows: Tensor) -> "EncoderMemory":
        return EncoderMemory(self.values.index_select(0, rows), self.keys.index_select(0, rows),
                             self.mask.index_select(0, rows))


@dataclass
class DecoderState:
    rnn: State  # the decoder stack's state, per layer (1, B, H)
    feed: Tensor | None  # (B, H) the last attentional output (input feeding), else None

    def select(self, rows: Tensor) -> "DecoderState":
        return DecoderState(select_state(self.rnn, rows), None if self.feed is None else self.feed.index_select(0, rows))


class Attention(nn.Module):
    """Scores of decoder outputs against encoder outputs, masked softmax over the source, context vectors."""

    def __init__(self, kind: str, hidden: int):
        super().__init__()
        if kind not in ("dot", "general", "additive"):
            raise SeqfitError(f"unknown attention {kind!r}; choose dot, general or additive")
        self.kind = kind
        if kind != "dot":
            self.key_proj = nn.Linear(hidden, hidden, bias=False)
        if kind == "additive":
            self.query_proj = nn.Linear(hidden, hidden)
            self.v = nn.Linear(hidden, 1, bias=False)

    def keys(self, values: Tensor) -> Tensor:
        return values if self.kind == "dot" else self.key_proj(values)

    def scores(self, query: Tensor, memory: EncoderMemory) -> Tensor:
        """query (B, T, H) -> fp32 scores (B, T, S), -inf at padded source positions."""
        if self.kind == "additive":  # (B, T, S, H) inside: the price of Bahdanau's score
            scores = self.v(torch.tanh(memory.keys[:, None] + self.query_proj(query)[:, :, None])).squeeze(-1)
        else:
            scores = torch.bmm(query, memory.keys.transpose(1, 2))
        return scores.float().masked_fill(~memory.mask[:, None, :], float("-inf"))

    def forward(self, query: Tensor, memory: EncoderMemory) -> Tensor:
        """query (B, T, H) -> context (B, T, H)."""
        weights = torch.softmax(self.scores(query, memory), -1)  # (B, T, S) fp32
        return torch.bmm(weights.to(memory.values.dtype), memory.values)


class Seq2Seq(nn.Module):
    def __init__(self, cfg: ModelCfg, src_vocab: int, tgt_vocab: int, *, loss: str = "full", loss_chunk: int = 0,
                 counts: Sequence[int] | None = None, checkpoint_time: int = 0):
        super().__init__()
        H, E = cfg.hidden, cfg.embed
        self.directions = 2 if cfg.bidirectional else 1
        if H % self.directions:
            raise SeqfitError(f"a bidirectional encoder splits --hidden between its two directions: give an even "
                              f"--hidden (got {H})")
        if cfg.share_embeddings and src_vocab != tgt_vocab:
            raise SeqfitError(f"--share-embeddings needs one vocabulary for source and target "
                              f"(the data has {src_vocab:,} and {tgt_vocab:,} entries)")
        self.hidden, self.src_vocab, self.tgt_vocab = H, src_vocab, tgt_vocab
        self.input_feed = cfg.input_feed
        self.checkpoint_time = checkpoint_time
        self.src_embedding = nn.Embedding(src_vocab, E)
        # shared: no second module (a second name for one tensor would be saved twice)
        self.tgt_embedding = None if cfg.share_embeddings else nn.Embedding(tgt_vocab, E)
        self.encoder = RecurrentStack(cfg.cell, E, H // self.directions, cfg.layers, dropout=cfg.dropout,
                                      bidirectional=cfg.bidirectional, layer_norm=cfg.layer_norm)
        self.decoder = RecurrentStack(cfg.cell, E + (H if cfg.input_feed else 0), H, cfg.layers, dropout=cfg.dropout,
                                      layer_norm=cfg.layer_norm)
        self.attention = Attention(cfg.attention, H)
        self.combine = nn.Linear(2 * H, H, bias=False)  # Luong's W_c over [context; decoder output]
        self.drop = nn.Dropout(cfg.dropout)
        self.head = make_output_head(loss, H, tgt_vocab, counts=counts, chunk_tokens=loss_chunk,
                                     tied_embedding=self.target_embedding if cfg.tie_weights else None)
        for emb in dict.fromkeys([self.src_embedding, self.target_embedding]):  # ordered: seeded runs repeat
            nn.init.uniform_(emb.weight, -0.1, 0.1)

    @property
    def target_embedding(self) -> nn.Embedding:
        return self.src_embedding if self.tgt_embedding is None else self.tgt_embedding

    # -- encoder --
    def encode(self, src: Tensor, lengths: Tensor) -> tuple[EncoderMemory, DecoderState]:
        """src (B, S) ids, lengths (B,) -> what the decoder attends to, and its first state."""
        emb = self.drop(self.src_embedding(src))  # (B, S, E)
        out, state = self.encoder(emb, None, lengths, checkpoint_time=self.checkpoint_time)  # (B, S, H)
        mask = torch.arange(src.shape[1], device=src.device)[None] < lengths.to(src.device)[:, None]  # (B, S)
        memory = EncoderMemory(out, self.attention.keys(out), mask)
        feed = out.new_zeros(src.shape[0], self.hidden, dtype=torch.float32) if self.input_feed else None
        return memory, DecoderState([self._bridge(s) for s in state], feed)

    def _bridge(self, s):
        """An encoder layer's final state (directions, B, H / directions) -> the decoder's (1, B, H), fp32."""
        def join(t: Tensor) -> Tensor:
            t = t.float()
            return t if self.directions == 1 else torch.cat(list(t), -1)[None]
        return tuple(join(t) for t in s) if isinstance(s, tuple) else join(s)

    # -- decoder --
    def _attentional(self, out: Tensor, memory: EncoderMemory) -> Tensor:
        """Decoder outputs (B, T, H) -> h~ (B, T, H)."""
        context = self.attention(out, memory)
        return torch.tanh(self.combine(torch.cat([context, out.to(context.dtype)], -1)))

    def _fed_steps(self, emb: Tensor, memory: EncoderMemory, state: DecoderState) -> tuple[Tensor, DecoderState]:
        """Input feeding: one decoder step at a time; emb (B, k, E) -> h~ (B, k, H)."""
        rnn, feed, outs = state.rnn, state.feed, []
        for t in range(emb.shape[1]):
            x = torch.cat([emb[:, t], feed.to(emb.dtype)], -1)[:, None]  # (B, 1, E + H)
            out, rnn = self.decoder(x, rnn)
            feed = self._attentional(out, memory)[:, 0]  # (B, H)
            outs.append(feed)
        return torch.stack(outs, 1), DecoderState(rnn, feed)

    def _decode_chunk(self, emb: Tensor, memory: EncoderMemory, state: DecoderState) -> tuple[Tensor, DecoderState]:
        if self.input_feed:
            return self._fed_steps(emb, memory, state)
        out, rnn = self.decoder(emb, state.rnn)  # (B, k, H): one fused call
        return self._attentional(out, memory), DecoderState(rnn, None)

    def decode(self, memory: EncoderMemory, state: DecoderState, tgt_in: Tensor) -> Tensor:
        """Teacher forcing: decoder inputs (B, T) -> attentional outputs h~ (B, T, H), before dropout.

        With --checkpoint-time k the target runs in chunks of k steps, each checkpointed: only the chunk
        boundaries' states stay, and each chunk is run again in backward (its dropout masks replayed)."""
        emb = self.drop(self.target_embedding(tgt_in))  # (B, T, E)
        T = emb.shape[1]
        k = resolve_chunk(self.checkpoint_time, T) if self.checkpoint_time else T
        if k >= T or not torch.is_grad_enabled():
            return self._decode_chunk(emb, memory, state)[0]
        outs = []
        for start in range(0, T, k):
            out, state = checkpoint(self._decode_chunk, emb[:, start:start + k], memory, state, use_reentrant=False)
            outs.append(out)
        return torch.cat(outs, 1)

    def forward(self, src: Tensor, src_lengths: Tensor, tgt_in: Tensor) -> Tensor:
        """Teacher-forced features (B, T, H) after dropout; the head's loss is applied to them outside (as the
        language model's), a chunk of rows at a time."""
        memory, state = self.encode(src, src_lengths)
        return self.drop(self.decode(memory, state, tgt_in))

    # -- one step at a time (decoding) --
    def step(self, tokens: Tensor, state: DecoderState, memory: EncoderMemory) -> tuple[Tensor, DecoderState]:
        """The previous tokens (B,) -> log-probabilities of the next (B, V) fp32, and the new state."""
        emb = self.target_embedding(tokens)[:, None]  # (B, 1, E)
        feats, state = self._decode_chunk(emb, memory, state)
        return self.head.log_probs(feats[:, 0]), state
