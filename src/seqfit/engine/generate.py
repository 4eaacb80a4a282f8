"""Sampling text from a language model, one token at a time with the state carried (one row of logits at a time)."""

from __future__ import annotations

import torch

from seqfit.data.tokenize import detokenize, make_tokenizer
from seqfit.data.vocab import Vocab
from seqfit.errors import SeqfitError

__all__ = ["generate"]


@torch.no_grad()
def generate(model, vocab: Vocab, prompt: str, *, tokens: int, temperature: float = 1.0, seed: int = 0,
             device: torch.device = torch.device("cpu"), subword=None) -> str:
    """Prompt text followed by ``tokens`` sampled tokens, as text (``subword``: the store's tokenizer.json)."""
    if temperature <= 0:
        raise SeqfitError("--temperature must be > 0")
    tokenize = make_tokenizer(vocab.level, lowercase=vocab.lowercase, subword=subword)
    lines = prompt.split("\n")
    ids: list[int] = []
    for i, line in enumerate(lines):
        ids += vocab.encode(tokenize(line))
        if i < len(lines) - 1:
            ids.append(vocab.eos_id)
    if not ids:
        ids = [vocab.eos_id]  # an empty prompt starts at a line boundary
    generator = torch.Generator(device="cpu").manual_seed(seed)
    model.eval()
    state = model.init_state(1, device=device)
    feats, state = model.features(torch.tensor([ids], device=device), state)  # (1, T, H)
    out = list(ids)
    banned = torch.tensor([vocab.pad_id, vocab.unk_id], device=device)
    for _ in range(tokens):
        logp = model.head.log_probs(feats[:, -1]).float()[0] / temperature  # (V,)
        logp[banned] = -float("inf")  # never emit padding or the unknown marker
        next_id = int(torch.multinomial(torch.softmax(logp, -1).cpu(), 1, generator=generator))
        out.append(next_id)
        feats, state = model.features(torch.tensor([[next_id]], device=device), state)
    text_tokens = vocab.decode(out)
    return detokenize(text_tokens, vocab.level, vocab.tokens[vocab.eos_id])
