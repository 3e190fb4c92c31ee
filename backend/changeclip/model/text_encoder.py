"""CLIP text transformer with learned context vectors (the official ``CLIPTextContextEncoder``).

A prompt's token ids (CLIP BPE, ``prompt_length`` = 64 per prompt) are embedded; the learned
context vectors (13 x text_width; the parameter ``contexts2`` lives on the parent network and is
passed in) are inserted right after the start token, giving the full ``context_length`` = 77
sequence. After positional embeddings, the causal transformer and ``ln_final``, the feature at the
end-of-text position, shifted by the number of context vectors (``argmax(ids) + 13``), is projected
to the joint embedding.
"""

from __future__ import annotations

import torch
from torch import nn

from changeclip.model.config import ChangeCLIPConfig
from changeclip.model.layers import LayerNorm32, Transformer


class CLIPTextContextEncoder(nn.Module):
    """The text encoder (module ``text_encoder``).

    Args:
        cfg: Network configuration (context_length, prompt_length, vocab_size, text_width,
            text_heads, text_layers, embed_dim).
    """

    def __init__(self, cfg: ChangeCLIPConfig) -> None:
        super().__init__()
        self.context_length = cfg.context_length
        self.prompt_length = cfg.prompt_length
        self.embed_dim = cfg.embed_dim
        self.positional_embedding = nn.Parameter(torch.empty(cfg.context_length, cfg.text_width))
        self.text_projection = nn.Parameter(torch.empty(cfg.text_width, cfg.embed_dim))
        self.transformer = Transformer(cfg.text_width, cfg.text_layers, cfg.text_heads)
        self.token_embedding = nn.Embedding(cfg.vocab_size, cfg.text_width)
        self.ln_final = LayerNorm32(cfg.text_width)
        nn.init.normal_(self.positional_embedding, std=0.01)
        nn.init.normal_(self.text_projection, std=cfg.text_width**-0.5)

    def causal_mask(self, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
        """Additive causal mask (context_length, context_length): -inf above the diagonal."""
        n = self.context_length
        return torch.full((n, n), float("-inf"), device=device, dtype=dtype).triu_(1)

    def forward(self, tokens: torch.Tensor, contexts: torch.Tensor) -> torch.Tensor:
        """Encode prompts.

        Args:
            tokens: Token ids (..., prompt_length) int64, each row SOT ... EOT then zeros.
            contexts: Learned context vectors, any shape that flattens to
                (n_context_vectors, text_width) (the official parameter is (1, 1, 13, width)).

        Returns:
            Text embeddings (..., embed_dim).

        Raises:
            ValueError: ``tokens`` does not end with a prompt_length axis.
        """
        if tokens.shape[-1] != self.prompt_length:
            raise ValueError(
                f"prompt token ids must have {self.prompt_length} positions in their last axis, "
                f"got shape {tuple(tokens.shape)}; tokenise with context_length={self.prompt_length}"
            )
        lead = tokens.shape[:-1]
        ids = tokens.reshape(-1, self.prompt_length)
        n = ids.shape[0]
        width = self.token_embedding.embedding_dim
        ctx = contexts.reshape(-1, width)
        emb = self.token_embedding(ids)  # n, 64, width
        seq = torch.cat([emb[:, :1], ctx.to(emb.dtype).expand(n, -1, -1), emb[:, 1:]], dim=1)  # n, 77, width
        seq = seq + self.positional_embedding.to(seq.dtype)
        mask = self.causal_mask(seq.device, seq.dtype)
        seq = self.transformer(seq.permute(1, 0, 2), attn_mask=mask).permute(1, 0, 2)
        seq = self.ln_final(seq)
        eot = ids.argmax(dim=-1) + ctx.shape[0]
        out = seq[torch.arange(n, device=seq.device), eot] @ self.text_projection
        return out.reshape(*lead, self.embed_dim)
