"""
Chinese ModernBERT: the encoder, its masked-LM, classification, multiple-choice and span heads, in one file.

The architecture is ModernBERT's (docs/method.md §6-7) with the choices of Chinese ModernBERT
(Zhao et al., 2025): pre-norm blocks with RMSNorm (or ModernBERT's bias-free LayerNorm), no biases
in linear layers, GeGLU, RoPE with its own theta for global and local layers, and local
(sliding-window, 128 tokens) attention in all layers but every third one.

Two ways to feed a batch, which give the same outputs for the same documents:
  padded:  input_ids (B, T) + attention_mask (B, T), one document per row;
  packed:  documents laid end to end, boundaries in cu_seqlens (flash-attn's varlen convention):
           input_ids (N,), or (B, T) when every row boundary is also a document boundary.
Attention never crosses a document and RoPE positions restart at each document.

This file imports only torch: it travels alone (with hf_cmbert.py) inside RMSNorm exports, so
saving and loading import their helpers (model_files.py) inside the methods that need them.
"""
import math
from dataclasses import dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F

NORMS = ("rmsnorm", "layernorm")
ATTN_BACKENDS = ("auto", "torch", "flex", "flash")


@dataclass
class CMBertConfig:
    vocab_size: int = 32000            # a multiple of 64 (docs/method.md §1)
    n_layer: int = 4
    n_head: int = 4
    n_embd: int = 256
    intermediate_size: int = 384       # GeGLU width: Wi maps n_embd -> 2 * intermediate_size
    local_window: int = 128            # total window: query i sees keys j with |i - j| <= 64
    global_every: int = 3              # layer i is global iff i % global_every == 0
    rope_theta_global: float = 80000.0
    rope_theta_local: float = 10000.0
    norm: str = "rmsnorm"              # the paper's choice; "layernorm" = ModernBERT exactly
    norm_eps: float = 1e-5
    max_seq_len: int = 8192
    embd_dropout: float = 0.0
    attn_dropout: float = 0.0
    mlp_dropout: float = 0.0
    classifier_dropout: float = 0.0
    classifier_pooling: str = "cls"    # "cls" or "mean" (sequence classification)
    pad_id: int = 0                    # the special ids of tokens.py
    cls_id: int = 2
    sep_id: int = 3
    mask_id: int = 4
    attn_backend: str = "auto"         # "auto" (flash-attn when it can run, else torch), "torch", "flex", "flash"

    def __post_init__(self):
        assert self.n_embd % self.n_head == 0, "n_embd must be a multiple of n_head"
        # The last layer must be global: its output is what the MLM head reads and what embeddings
        # average, and a local last layer would mix only +-64 neighbours into it after the last
        # global layer gathered the whole document (docs/method.md §6). So n_layer = 4, 7, ..., 22, 28.
        assert (self.n_layer - 1) % self.global_every == 0, \
            f"n_layer={self.n_layer}: the last layer must be global ((n_layer - 1) % global_every == 0)"
        assert self.local_window % 2 == 0 and self.local_window > 0, "local_window must be even"
        assert self.norm in NORMS, f"norm={self.norm!r}: must be rmsnorm or layernorm"
        assert self.attn_backend in ATTN_BACKENDS, f"attn_backend={self.attn_backend!r}: must be one of {ATTN_BACKENDS}"
        assert self.classifier_pooling in ("cls", "mean")

    def is_global(self, i):
        return i % self.global_every == 0


PRESETS = {
    # the CPU default: 4 layers (0 and 3 global), small enough to pre-train on a laptop CPU in minutes
    "tiny": dict(n_layer=4, n_head=4, n_embd=256, intermediate_size=384),
    "base": dict(n_layer=22, n_head=12, n_embd=768, intermediate_size=1152),   # ModernBERT-base
    "large": dict(n_layer=28, n_head=16, n_embd=1024, intermediate_size=2624),  # the paper's model
}


def config_from_preset(name, **overrides):
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose from {', '.join(PRESETS)}")
    return CMBertConfig(**{**PRESETS[name], **overrides})


# ------------------------------------------------------------------------------------------
# Position and normalisation

def rope(x, cos, sin):
    """GPT-NeoX (rotate-half) rotary embedding: dimension d is paired with d + D/2 and each pair
    (x1, x2) turns by its angle: (x1 cos - x2 sin, x2 cos + x1 sin). cos/sin are half width (D/2),
    computed in fp32 and cast once per forward; x holds q and k together, so this runs once."""
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1)


class RMSNorm(nn.RMSNorm):
    """x / rms(x) * weight, computed in fp32 whatever the input: under bf16 autocast a bf16 input
    meets an fp32 weight, which torch's fused kernel refuses (it warns and takes a slow path)."""
    def forward(self, x):
        return super().forward(x.float()).to(x.dtype)


def norm(cfg):
    if cfg.norm == "rmsnorm":
        return RMSNorm(cfg.n_embd, eps=cfg.norm_eps)
    return nn.LayerNorm(cfg.n_embd, eps=cfg.norm_eps, bias=False)  # ModernBERT's: no bias


# ------------------------------------------------------------------------------------------
# The attention rule: query i sees key j iff both are in the same document and, in a local layer,
# |i - j| <= window / 2. One entry point; the default backend ("torch") is PyTorch's SDPA with
# boolean masks built once per forward and shared by all layers; the optional kernels (flex, flash)
# at the end of the file compute the same rule, and tests check every backend against a dense one.

@dataclass
class Layout:
    """Where every token sits, computed once per forward and shared by all layers.
    torch/flex: tokens stay (B, T); `doc` is each token's document id, -1 for padding.
    flash: the valid tokens are flattened to (N,), documents delimited by cu_seqlens.
    `rows` tells the torch backend what a cheaper mask may assume:
      "docs"   any arrangement (packed documents, padding): same-document masks;
      "padded" one document per row, possibly padded (attention_mask): a key-padding mask;
      "full"   one unpadded document per row: no mask at all."""
    pos: torch.Tensor                  # position within its document (RoPE restarts per document)
    doc: torch.Tensor                  # (B, T) document id, -1 = padding
    backend: str = "torch"             # "torch", "flex" or "flash"
    rows: str = "docs"                 # "docs", "padded" or "full" (see above)
    cu_seqlens: torch.Tensor = None    # flash only
    max_seqlen: int = 0                # flash only
    keep: torch.Tensor = None          # flash only: which of the B*T slots hold real tokens
    masks: dict = field(default_factory=dict)  # torch/flex: masks by kind, built once, reused by layers


def attention(q, k, v, layout, window, dropout_p):
    """Scaled dot-product attention within documents; window=None for global layers.
    q, k, v: (B, T, H, D) for torch and flex, (N, H, D) for flash. Returns the same shape."""
    half = window // 2 if window else None
    if layout.backend == "flash":
        return flash_backend(q, k, v, layout, half, dropout_p)
    T = q.shape[1]
    if half is not None and T - 1 <= half:  # short rows: every pair is inside the window
        half = None
    if layout.backend == "flex":
        return flex_backend(q, k, v, layout, half, dropout_p)
    if half is not None and T > 3 * half:  # long rows: block-wise, O(T * window)
        return local_attention(q, k, v, layout, half, dropout_p)
    # short rows (at most 3 blocks): one dense (T x T) band mask is cheaper than the blocks
    key = "global" if half is None else "band"
    if key not in layout.masks:
        layout.masks[key] = dense_mask(layout, half, T, q.device)
    y = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                       attn_mask=layout.masks[key], dropout_p=dropout_p)
    return y.transpose(1, 2)


def dense_mask(layout, half, T, device):
    """Boolean mask broadcastable to (B, 1, T, T), or None when every pair may attend. The smallest
    one the layout allows: nothing, key padding (B, 1, 1, T), or same-document (B, 1, T, T)."""
    doc = layout.doc
    if layout.rows == "full":
        allowed = None
    elif layout.rows == "padded":
        allowed = (doc >= 0)[:, None, None, :]
    else:  # padding (-1) matches padding, so no query row is empty (an empty row would give NaN)
        allowed = doc[:, None, :, None] == doc[:, None, None, :]
    if half is None:
        return allowed
    i = torch.arange(T, device=device)
    band = (i[:, None] - i[None, :]).abs() <= half
    if allowed is None:
        return band
    mask = band & allowed
    if layout.rows == "padded":  # a padding query far from every real token would see no key at
        mask = mask | (doc < 0)[:, None, :, None]  # all: let it see every key (its output is unused)
    return mask


def local_attention(q, k, v, layout, half, dropout_p):
    """Exact sliding-window attention (|i - j| <= half) in O(T * half) time and memory.

    Why it equals the band-mask definition: cut the sequence into blocks of `half` queries. Query i
    in block b = i // half can only see keys j with |i - j| <= half, and all of those lie in blocks
    b - 1, b and b + 1 (a key more than one block away is more than `half` positions away). So
    attending over those 3 * half keys with the band mask and the same-document mask drops no allowed
    pair and adds none: the softmax runs over exactly the keys the dense definition allows. HF
    ModernBERT's T x T mask is what this avoids: at T = 8,192 that mask alone is 67M entries per
    layer. (The key blocks are copies; the flex backend computes the same without them.)"""
    B, T, H, D = q.shape
    h = half
    nb = -(-T // h)  # number of blocks
    pad = nb * h - T
    if "local" not in layout.masks:
        doc = F.pad(layout.doc, (0, pad), value=-1)  # padding matches padding: no empty softmax rows
        doc_q = doc.view(B, nb, h)
        doc_k = F.pad(doc, (h, h), value=-2).unfold(1, 3 * h, h)  # -2 (outside) matches nothing
        i = torch.arange(h, device=q.device)[:, None] + h  # query index inside its 3h key span
        j = torch.arange(3 * h, device=q.device)[None, :]
        band = (i - j).abs() <= h
        layout.masks["local"] = (band & (doc_q[..., :, None] == doc_k[..., None, :])).view(B * nb, 1, h, 3 * h)
    qb = F.pad(q, (0, 0, 0, 0, 0, pad)).view(B, nb, h, H, D).permute(0, 1, 3, 2, 4).reshape(B * nb, H, h, D)

    def key_blocks(x):  # (B, T, H, D) -> (B * nb, H, 3h, D): block b sees blocks b - 1, b, b + 1
        x = F.pad(x, (0, 0, 0, 0, h, h + pad)).view(B, nb + 2, h, H, D)
        x = torch.cat((x[:, :-2], x[:, 1:-1], x[:, 2:]), dim=2)  # (B, nb, 3h, H, D); cheaper backward than unfold
        return x.transpose(2, 3).reshape(B * nb, H, 3 * h, D)
    y = F.scaled_dot_product_attention(qb, key_blocks(k), key_blocks(v), attn_mask=layout.masks["local"],
                                       dropout_p=dropout_p)
    return y.view(B, nb, H, h, D).permute(0, 1, 3, 2, 4).reshape(B, nb * h, H, D)[:, :T]


# ------------------------------------------------------------------------------------------
# The modules. Names follow Hugging Face's ModernBERT, so export is a plain state dict.

class Attention(nn.Module):
    def __init__(self, cfg, i):
        super().__init__()
        self.n_head, self.head_dim = cfg.n_head, cfg.n_embd // cfg.n_head
        self.kind = "global" if cfg.is_global(i) else "local"
        self.window = None if cfg.is_global(i) else cfg.local_window
        self.dropout = cfg.attn_dropout
        self.Wqkv = nn.Linear(cfg.n_embd, 3 * cfg.n_embd, bias=False)  # fused: one matmul, not three
        self.Wo = nn.Linear(cfg.n_embd, cfg.n_embd, bias=False)

    def forward(self, x, layout, rotary):
        qkv = self.Wqkv(x).view(*x.shape[:-1], 3, self.n_head, self.head_dim)
        q, k = rope(qkv[..., :2, :, :], *rotary[self.kind]).unbind(-3)  # rotate q and k in one go
        y = attention(q, k, qkv[..., 2, :, :], layout, self.window, self.dropout if self.training else 0.0)
        return self.Wo(y.flatten(-2))


class MLP(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.Wi = nn.Linear(cfg.n_embd, 2 * cfg.intermediate_size, bias=False)
        self.Wo = nn.Linear(cfg.intermediate_size, cfg.n_embd, bias=False)
        self.drop = nn.Dropout(cfg.mlp_dropout)

    def forward(self, x):
        inp, gate = self.Wi(x).chunk(2, dim=-1)  # GeGLU
        return self.Wo(self.drop(F.gelu(inp) * gate))


class Block(nn.Module):
    def __init__(self, cfg, i):
        super().__init__()
        # the embedding output is already normalised, so the first block skips its attention norm
        self.attn_norm = nn.Identity() if i == 0 else norm(cfg)
        self.attn = Attention(cfg, i)
        self.mlp_norm = norm(cfg)
        self.mlp = MLP(cfg)

    def forward(self, x, layout, rotary):
        x = x + self.attn(self.attn_norm(x), layout, rotary)
        return x + self.mlp(self.mlp_norm(x))


class Embeddings(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.tok_embeddings = nn.Embedding(cfg.vocab_size, cfg.n_embd)  # no position embedding: RoPE
        self.norm = norm(cfg)
        self.drop = nn.Dropout(cfg.embd_dropout)

    def forward(self, ids):
        return self.drop(self.norm(self.tok_embeddings(ids)))


class Encoder(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.cfg = cfg
        self.embeddings = Embeddings(cfg)
        self.layers = nn.ModuleList(Block(cfg, i) for i in range(cfg.n_layer))
        self.final_norm = norm(cfg)
        if cfg.attn_backend == "flash" and not flash_attn_available():
            raise RuntimeError("attn_backend='flash' but the flash_attn package does not import")

    def backend(self, ids):
        """The attention backend for this call: the configured one; "auto" picks flash-attn where
        it can run (CUDA, fp16/bf16, package installed) and torch otherwise."""
        if self.cfg.attn_backend in ("torch", "flex"):
            return self.cfg.attn_backend
        half = torch.is_autocast_enabled("cuda") or self.embeddings.tok_embeddings.weight.dtype in (torch.float16, torch.bfloat16)
        ok = ids.is_cuda and half and flash_attn_available()
        if self.cfg.attn_backend == "flash" and not ok:
            raise RuntimeError("attn_backend='flash' needs CUDA tensors in fp16/bf16 (autocast or .to(dtype))")
        return "flash" if ok else "torch"

    def layout(self, ids, attention_mask, cu_seqlens):
        """Document id and position of every token, from a padded or a packed batch. Built from
        tensors only: no host synchronisation and nothing torch.compile cannot trace (the checks of
        cu_seqlens run on the host in eager mode only; compiled, they become device-side asserts)."""
        shape = ids.shape if ids.dim() == 2 else (1, ids.numel())
        B, T = shape
        dev = ids.device
        if cu_seqlens is None:  # padded: row b is document b
            rows = "full" if attention_mask is None else "padded"
            if attention_mask is None:
                pos = torch.arange(T, device=dev).expand(B, T)
                doc = torch.arange(B, device=dev)[:, None].expand(B, T)
            else:
                valid = attention_mask.view(shape).bool()
                doc = torch.where(valid, torch.arange(B, device=dev)[:, None], -1)
                pos = (valid.long().cumsum(1) - 1).clamp(min=0)
        else:  # packed: documents end to end over the flattened B * T tokens
            if attention_mask is not None:
                raise ValueError("a packed batch has no padding: pass cu_seqlens or attention_mask")
            rows = "docs"
            cu = cu_seqlens.to(dev, torch.long)
            check_cu_seqlens(cu, B, T)
            flat = torch.arange(B * T, device=dev)
            # the document of each token: how many boundaries lie at or before it, minus the 0 at
            # the start (searching cu itself, not cu[1:], so a window of one document has nothing of
            # size 1 for torch.compile to specialise on)
            d = torch.searchsorted(cu, flat, right=True) - 1
            pos, doc = (flat - cu[d]).view(shape), d.view(shape)
        backend = self.backend(ids)
        if backend != "flash":
            return Layout(pos=pos, doc=doc, backend=backend, rows=rows)
        keep = (doc >= 0).flatten()
        lengths = torch.bincount(doc.flatten()[keep])
        cu = F.pad(lengths.cumsum(0), (1, 0)).to(torch.int32)
        return Layout(pos=pos.flatten()[keep], doc=doc, backend="flash", cu_seqlens=cu,
                      max_seqlen=int(lengths.max()), keep=keep)  # flash-attn needs max_seqlen on the host

    def rotary(self, pos, dtype, theta_global):
        """cos/sin (half width) for global and local layers, in fp32, cast once to the compute dtype."""
        D = self.cfg.n_embd // self.cfg.n_head
        out = {}
        for kind, theta in [("global", theta_global), ("local", self.cfg.rope_theta_local)]:
            inv_freq = 1.0 / theta ** (torch.arange(0, D, 2, device=pos.device, dtype=torch.float32) / D)
            ang = (pos.float()[..., None] * inv_freq)[..., None, None, :]  # broadcast over (q|k, heads)
            out[kind] = (ang.cos().to(dtype), ang.sin().to(dtype))
        return out

    def forward(self, input_ids, attention_mask=None, cu_seqlens=None, rope_theta_global=None):
        """Hidden states (*input_ids.shape, n_embd); padding positions hold meaningless values.
        rope_theta_global overrides the config's global RoPE theta for this call: a training stage
        (context extension) passes its own theta explicitly instead of editing the config."""
        lay = self.layout(input_ids, attention_mask, cu_seqlens)
        ids = input_ids.reshape(lay.doc.shape)
        if lay.keep is not None:  # flash: run on the valid tokens only, no padding anywhere
            ids = ids.flatten()[lay.keep]
        x = self.embeddings(ids)
        dtype = torch.get_autocast_dtype(x.device.type) if torch.is_autocast_enabled(x.device.type) else x.dtype
        rotary = self.rotary(lay.pos, dtype, rope_theta_global or self.cfg.rope_theta_global)
        for block in self.layers:
            x = block(x, lay, rotary)
        x = self.final_norm(x)
        if lay.keep is not None:
            x = x.new_zeros(lay.keep.numel(), x.shape[-1]).index_put_((lay.keep.nonzero()[:, 0],), x)
        return x.reshape(*input_ids.shape, -1)


def check_cu_seqlens(cu, B, T):
    """cu_seqlens must run from 0 to B * T and contain every row edge (a row is never shared by two
    documents' halves). Eager: clear errors, one host synchronisation per forward. Under
    torch.compile: device-side asserts, so the traced graph has no break and no synchronisation."""
    ends_right = cu[-1] == B * T
    edges = torch.arange(1, B, device=cu.device) * T
    edges_in = torch.isin(edges, cu).all()
    if torch.compiler.is_compiling():
        torch._assert_async(ends_right, "cu_seqlens must end at the number of tokens in the batch")
        torch._assert_async(edges_in, "packed (B, T) input: every multiple of T must be in cu_seqlens")
        return
    if not ends_right:
        raise ValueError(f"cu_seqlens ends at {int(cu[-1])}, the batch has {B * T} tokens")
    if not edges_in:
        raise ValueError(f"packed (B, T) input: every multiple of T={T} must be in cu_seqlens")


def mean_pool(h, mask=None):
    """A sentence vector: the mean of the hidden states over each row's real tokens (not padding).
    The pooling of cmbert's embeddings (use.py, the SimCLUE probe) and of the mean classifier."""
    if mask is None:
        return h.mean(-2)
    m = mask.to(h.dtype)[..., None]
    return (h * m).sum(-2) / m.sum(-2)


# ------------------------------------------------------------------------------------------
# What every model shares: init, counting, the optimiser, FLOPs, saving and loading

class PreTrained(nn.Module):
    def init_weights(self):
        """ModernBERT's init: truncated normal cut at +-2 sigma; sigma = 0.02 for inputs and
        embeddings, 0.02 / sqrt(2 L) for the projections that write into the residual stream."""
        cfg, std = self.cfg, 0.02
        out_std = std / math.sqrt(2.0 * cfg.n_layer)
        for name, p in self.named_parameters():
            if p.dim() < 2:
                nn.init.ones_(p) if name.endswith("norm.weight") else nn.init.zeros_(p)
            else:
                s = out_std if name.endswith(("Wo.weight", "head.dense.weight")) else std
                if name.endswith("classifier.weight"):
                    s = cfg.n_embd ** -0.5
                nn.init.trunc_normal_(p, std=s, a=-2 * s, b=2 * s)

    def num_params(self, embeddings=True):
        n = sum(p.numel() for p in self.parameters())  # tied decoder weight counted once
        return n if embeddings else n - self.model.embeddings.tok_embeddings.weight.numel()

    def configure_optimizers(self, weight_decay, lr, betas, fused=False, embedding_lr_scale=1.0):
        """AdamW; no weight decay for norms, biases and the (tied) embedding. The embedding's group
        carries lr_scale, the multiple of the scheduled learning rate it trains at: its rows are
        updated only when their token occurs (or, tied, when the decoder scores it), so a larger
        rate can help it keep up. fused=True steps all parameters in one kernel (CUDA, and CPU
        since torch 2.4) instead of a loop over them."""
        decay, no_decay, embedding = [], [], []
        for name, p in self.named_parameters():
            if p.requires_grad:
                group = embedding if "tok_embeddings" in name else decay if p.dim() >= 2 and "embeddings" not in name else no_decay
                group.append(p)
        groups = [{"params": decay, "weight_decay": weight_decay, "lr_scale": 1.0},
                  {"params": no_decay, "weight_decay": 0.0, "lr_scale": 1.0},
                  {"params": embedding, "weight_decay": 0.0, "lr_scale": embedding_lr_scale}]
        return torch.optim.AdamW([g for g in groups if g["params"]], lr=lr, betas=betas, fused=fused)

    def flops_per_token(self, seq_len, mask_rate=0.3):
        """Training FLOPs per token (forward + backward = 3 x forward, 2 FLOPs per MAC). Local
        layers are charged for their window only; the MLM head runs on masked tokens only."""
        cfg = self.cfg
        per_layer = 2 * cfg.n_embd * (3 * cfg.n_embd + cfg.n_embd + 3 * cfg.intermediate_size)
        attn = sum(4 * cfg.n_embd * (seq_len if cfg.is_global(i) else min(seq_len, cfg.local_window + 1))
                   for i in range(cfg.n_layer))
        head = 2 * cfg.n_embd * (cfg.n_embd + cfg.vocab_size) * mask_rate
        return 3 * (cfg.n_layer * per_layer + attn + head)

    def estimate_mfu(self, tokens_per_s, seq_len, peak_flops, mask_rate=0.3):
        return self.flops_per_token(seq_len, mask_rate) * tokens_per_s / peak_flops if peak_flops else None

    def state_dict_clean(self):
        """Weights without torch.compile's `_orig_mod.` prefixes and without the tied decoder copy."""
        sd = {k.replace("_orig_mod.", ""): v for k, v in self.state_dict().items()}
        sd.pop("decoder.weight", None)
        return sd

    def save_pretrained(self, out_dir, extra_config=None):
        """model.safetensors, then config.json (last: a folder without it is incomplete), with
        extra_config added to it (train.py records the tokenizer's sha256 there)."""
        from support.model_files import save_pretrained
        save_pretrained(self, out_dir, extra_config)

    @classmethod
    def from_pretrained(cls, model_dir, **kwargs):
        """Load a folder written by save_pretrained or save_hf (either norm), or a transformers
        ModernBERT folder, exactly, or refuse it in one line naming the file. kwargs override config
        fields that do not shape the weights (attn_backend, dropout) or go to the constructor
        (num_labels)."""
        from support.model_files import load_pretrained
        return load_pretrained(cls, CMBertConfig, model_dir, **kwargs)


# ------------------------------------------------------------------------------------------
# The models: masked LM (pre-training), sequence classifier, multiple choice and span extractor (fine-tuning)

class Head(nn.Module):
    """ModernBERT's prediction head: dense, GELU, norm (shared by the MLM and classification models)."""
    def __init__(self, cfg):
        super().__init__()
        self.dense = nn.Linear(cfg.n_embd, cfg.n_embd, bias=False)
        self.norm = norm(cfg)

    def forward(self, x):
        return self.norm(F.gelu(self.dense(x)))


class CMBert(PreTrained):
    """Encoder + MLM head; the decoder is tied to the token embedding and keeps a bias."""
    def __init__(self, cfg):
        super().__init__()
        self.cfg = cfg
        self.model = Encoder(cfg)
        self.head = Head(cfg)
        self.decoder = nn.Linear(cfg.n_embd, cfg.vocab_size, bias=True)
        self.init_weights()
        self.decoder.weight = self.model.embeddings.tok_embeddings.weight

    @torch.no_grad()
    def init_unigram_prior(self, counts):
        """Start on the unigram plateau instead of spending the first steps climbing onto it: the
        decoder bias becomes the log-frequency of every token in the training data (counts, add-0.1
        smoothed; special tokens, never labels, get the smoothing only), so the first prediction is
        the corpus' unigram distribution and the gradient goes straight to using context. Returns
        those log-probabilities (float64): validation's no-context baseline."""
        counts = torch.as_tensor(counts, dtype=torch.float64).clone()
        counts[:self.cfg.mask_id + 1] = 0  # [PAD] [UNK] [CLS] [SEP] [MASK]
        logp = torch.log((counts + 0.1) / (counts + 0.1).sum())
        self.decoder.bias.copy_(logp)
        return logp

    def forward(self, input_ids, attention_mask=None, labels=None, cu_seqlens=None, rope_theta_global=None,
                reduction="mean"):
        """Returns (logits, loss). Without labels: logits for every token, (*input_ids.shape, V),
        and loss None. With labels: sparse prediction. The head runs only on the positions whose
        label is not -100, so logits are (n_labelled, V) and loss is their mean cross-entropy
        (reduction="sum": their sum, which train.py divides by the masked tokens of the whole step)."""
        h = self.model(input_ids, attention_mask, cu_seqlens, rope_theta_global)
        if labels is None:
            return self.decoder(self.head(h)), None
        sel = labels != -100
        logits = self.decoder(self.head(h[sel]))
        loss = F.cross_entropy(logits.float(), labels[sel], reduction="sum")
        if reduction == "mean":  # sum / count, not a mean: with no labelled token it is 0, not NaN
            loss = loss / sel.sum().clamp(min=1)
        return logits, loss

    def save_hf(self, out_dir, tokenizer_file=None):
        """A folder that Hugging Face transformers loads (AutoModel, AutoModelForMaskedLM,
        AutoModelForSequenceClassification), with the complete tokenizer when tokenizer_file is given
        (and then also a sentence-transformers model: the encoder and cmbert's mean pooling):
        transformers' own ModernBERT for norm="layernorm"; for the paper's RMSNorm, this file and
        hf_cmbert.py travel with it (trust_remote_code=True)."""
        from support.model_files import save_hf
        save_hf(self, out_dir, tokenizer_file)


class CMBertForSequenceClassification(PreTrained):
    """Encoder + ModernBERT's classification head: pool ([CLS] or mean), dense-GELU-norm, linear."""
    def __init__(self, cfg, num_labels=2):
        super().__init__()
        self.cfg, self.num_labels = cfg, num_labels
        self.model = Encoder(cfg)
        self.head = Head(cfg)
        self.drop = nn.Dropout(cfg.classifier_dropout)
        self.classifier = nn.Linear(cfg.n_embd, num_labels)
        self.init_weights()

    def forward(self, input_ids, attention_mask=None, labels=None):
        h = self.model(input_ids, attention_mask)
        pooled = h[:, 0] if self.cfg.classifier_pooling == "cls" else mean_pool(h, attention_mask)
        logits = self.classifier(self.drop(self.head(pooled)))
        loss = None if labels is None else F.cross_entropy(logits.float(), labels)
        return logits, loss


class CMBertForMultipleChoice(CMBertForSequenceClassification):
    """The standard multiple-choice head (as for SWAG and RACE): each (passage, question, choice)
    is one row, the classification head with one output scores it, and the choices of a question
    compete in one softmax. Rows come flat, question after question, and n_choices says how many
    belong to each question, so questions with 2, 3 and 4 choices share a batch without padding
    choices: a question's missing slots get -inf logits, which the softmax gives probability 0."""
    def __init__(self, cfg):
        super().__init__(cfg, num_labels=1)

    def forward(self, input_ids, attention_mask=None, labels=None, n_choices=None):
        """input_ids (N, T): every choice of every question; n_choices: rows per question (a list
        or CPU tensor summing to N; None = one question). Returns (logits (questions, most
        choices), loss): labels are the index of each question's answer among its choices."""
        score = super().forward(input_ids, attention_mask)[0].float().squeeze(-1)  # (N,)
        n = torch.as_tensor([len(score)] if n_choices is None else n_choices, dtype=torch.long)
        question = torch.repeat_interleave(torch.arange(len(n)), n)
        slot = torch.arange(len(score)) - torch.repeat_interleave(n.cumsum(0) - n, n)  # place within its question
        logits = score.new_full((len(n), int(n.max())), float("-inf"))
        logits = logits.index_put((question.to(score.device), slot.to(score.device)), score)
        loss = None if labels is None else F.cross_entropy(logits, labels)
        return logits, loss


class CMBertForSpans(PreTrained):
    """Encoder + a linear layer giving start and end logits per token (extractive QA: CMRC2018)."""
    def __init__(self, cfg):
        super().__init__()
        self.cfg = cfg
        self.model = Encoder(cfg)
        self.classifier = nn.Linear(cfg.n_embd, 2)
        self.init_weights()

    def forward(self, input_ids, attention_mask=None):
        start, end = self.classifier(self.model(input_ids, attention_mask)).float().unbind(-1)
        if attention_mask is None:
            return start, end
        pad = ~attention_mask.bool()
        return start.masked_fill(pad, -1e4), end.masked_fill(pad, -1e4)


# ------------------------------------------------------------------------------------------
# Optional attention kernels: the same rule, computed by other code
#
#   flex   FlexAttention: the rule as a mask function; a block mask, built once per forward, lists
#          the 128 x 128 tiles that hold any allowed pair, and the kernel computes only those tiles.
#          No T x T mask for packed documents, no copied key blocks. It is fast only under
#          torch.compile (its eager fallback materialises all scores), so "auto" never picks it.
#   flash  flash-attn's varlen kernel over the unpadded tokens (optional package, CUDA, fp16/bf16).

def flash_attn_available():
    try:
        import flash_attn  # noqa: F401  (imported lazily: it only exists on CUDA machines)
        return True
    except ImportError:
        return False


def flash_backend(q, k, v, layout, half, dropout_p):
    from flash_attn import flash_attn_varlen_func
    # flash-attn's window is inclusive on both sides: (64, 64) lets i see |i - j| <= 64
    w = (half, half) if half else (-1, -1)
    return flash_attn_varlen_func(q, k, v, layout.cu_seqlens, layout.cu_seqlens, layout.max_seqlen,
                                  layout.max_seqlen, dropout_p=dropout_p, causal=False, window_size=w)


def flex_backend(q, k, v, layout, half, dropout_p):
    """The rule as a mask function of (row b, head, query i, key j); padding (-1) matches padding,
    so no row is empty. Under torch.compile this is one fused kernel that skips every 128 x 128
    tile without an allowed pair (most of them, for packed short documents)."""
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention
    if dropout_p:
        raise ValueError("attn_backend='flex' has no attention dropout: set attn_dropout=0 or use 'torch'")
    key = "flex_global" if half is None else "flex_local"
    if key not in layout.masks:
        doc = layout.doc

        def same_doc(b, h, i, j):
            return doc[b, i] == doc[b, j]

        def in_window(b, h, i, j):
            return (doc[b, i] == doc[b, j]) & ((i - j).abs() <= half)
        B, T = doc.shape
        # outside torch.compile on CUDA, build the block mask with a compiled kernel rather than a
        # dense (B, T, T) evaluation of the mask function (create_block_mask's `_compile` switch)
        fast = doc.is_cuda and not torch.compiler.is_compiling()
        layout.masks[key] = create_block_mask(same_doc if half is None else in_window, B, None, T, T,
                                              device=doc.device, _compile=fast)
    fn = flex_attention
    if q.is_cuda and not torch.compiler.is_compiling():
        fn = compiled_flex_attention()  # eager model on a GPU: still use the fused kernel
    y = fn(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), block_mask=layout.masks[key])
    return y.transpose(1, 2)


_compiled_flex = None


def compiled_flex_attention():
    global _compiled_flex
    if _compiled_flex is None:
        from torch.nn.attention.flex_attention import flex_attention
        _compiled_flex = torch.compile(flex_attention, dynamic=False)
    return _compiled_flex
