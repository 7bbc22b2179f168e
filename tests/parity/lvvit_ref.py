"""lvvit_ref.py: a plain PyTorch LV-ViT with token labeling and MixToken, written
following docs/METHOD.md sections 2-4. It is the reference
the C engine is checked against (tests/parity/run_parity.py) and the model the
PyTorch benchmark runs (bench/bench_pytorch.py).

Module and parameter names are those of the official state_dict:
cls_token, pos_embed, patch_embed.{conv1,bn1,conv2,bn2,conv3,bn3,proj},
blocks.i.{norm1,attn.qkv,attn.proj,norm2,mlp.fc1,mlp.fc2}, norm, head, aux_head.

    cfg = LVViTConfig(img_size=224, ...)          # or preset("lvvit_t")
    model = LVViT(cfg)
    cls, aux = model(images, mix_box=(r0, c0, r1, c1))   # aux [B, N, K], box swapped back
    score = inference_score(cls, aux)
    loss, loss_cls, loss_dense, lam = token_label_loss(cls, aux, t_cls, t_dense, box, N, cw, dw)
    opt = make_adamw(model, lr, weight_decay, (b1, b2), eps)
"""
import math
from dataclasses import dataclass, asdict

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

MODEL_FIELDS = ("img_size", "patch_size", "embed_dim", "depth", "num_heads", "mlp_ratio",
                "stem_channels", "skip_lam", "num_classes", "drop_path_rate")


@dataclass
class LVViTConfig:
    img_size: int = 224
    patch_size: int = 16
    embed_dim: int = 240
    depth: int = 12
    num_heads: int = 4
    mlp_ratio: float = 3.0
    stem_channels: int = 64
    skip_lam: float = 1.0
    num_classes: int = 1000
    drop_path_rate: float = 0.1

    @property
    def grid(self):
        return self.img_size // self.patch_size

    @property
    def tokens(self):
        return self.grid * self.grid

    @property
    def hidden(self):
        return int(self.embed_dim * self.mlp_ratio)

    def to_dict(self):
        return asdict(self)

    def validate(self):
        if self.patch_size % 2 or self.patch_size < 2:
            raise ValueError("patch_size must be even")
        if self.img_size % self.patch_size:
            raise ValueError("img_size must be divisible by patch_size")
        if self.embed_dim % self.num_heads:
            raise ValueError("embed_dim must be divisible by num_heads")
        return self


PRESETS = {
    "lvvit_t": dict(embed_dim=240, depth=12, num_heads=4, mlp_ratio=3.0, stem_channels=64,
                    skip_lam=1.0, drop_path_rate=0.1, img_size=224),
    "lvvit_s": dict(embed_dim=384, depth=16, num_heads=6, mlp_ratio=3.0, stem_channels=64,
                    skip_lam=2.0, drop_path_rate=0.1, img_size=224),
    "lvvit_m": dict(embed_dim=512, depth=20, num_heads=8, mlp_ratio=3.0, stem_channels=64,
                    skip_lam=2.0, drop_path_rate=0.2, img_size=224),
    "lvvit_l": dict(embed_dim=768, depth=24, num_heads=12, mlp_ratio=3.0, stem_channels=128,
                    skip_lam=3.0, drop_path_rate=0.3, img_size=448),
}


def preset(name, **overrides):
    if name not in PRESETS:
        raise KeyError("unknown preset %r (have %s)" % (name, ", ".join(sorted(PRESETS))))
    d = dict(patch_size=16, num_classes=1000)
    d.update(PRESETS[name])
    d.update(overrides)
    return LVViTConfig(**d).validate()


def config_from_dict(d):
    d = dict(d)
    base = {}
    if "preset" in d:
        base = preset(d.pop("preset")).to_dict()
    unknown = set(d) - set(MODEL_FIELDS)
    if unknown:
        raise KeyError("unknown config fields: %s" % ", ".join(sorted(unknown)))
    base.update(d)
    missing = set(MODEL_FIELDS) - set(base)
    if missing:
        raise KeyError("missing config fields: %s" % ", ".join(sorted(missing)))
    return LVViTConfig(**base).validate()


# ---------------------------------------------------------------- modules

class DropPath(nn.Module):
    """Per-sample stochastic depth; kept samples scaled by 1/(1-p)."""

    def __init__(self, p=0.0):
        super().__init__()
        self.p = float(p)

    def forward(self, x):
        if self.p == 0.0 or not self.training:
            return x
        keep = 1.0 - self.p
        mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
        return x * mask / keep


class PatchEmbed4_2(nn.Module):
    """Conv stem: 7x7/2 conv-BN-ReLU, two 3x3 conv-BN-ReLU, then proj kernel=stride=P/2."""

    def __init__(self, patch_size, in_chans, stem, embed_dim):
        super().__init__()
        k = patch_size // 2
        self.conv1 = nn.Conv2d(in_chans, stem, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(stem, eps=1e-5, momentum=0.1)
        self.conv2 = nn.Conv2d(stem, stem, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(stem, eps=1e-5, momentum=0.1)
        self.conv3 = nn.Conv2d(stem, stem, 3, stride=1, padding=1, bias=False)
        self.bn3 = nn.BatchNorm2d(stem, eps=1e-5, momentum=0.1)
        self.proj = nn.Conv2d(stem, embed_dim, k, stride=k, bias=True)

    def forward(self, x):
        x = F.relu(self.bn1(self.conv1(x)))
        x = F.relu(self.bn2(self.conv2(x)))
        x = F.relu(self.bn3(self.conv3(x)))
        return self.proj(x)


class Attention(nn.Module):
    def __init__(self, dim, num_heads):
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = self.head_dim ** -0.5
        self.qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x):
        B, T, D = x.shape
        qkv = self.qkv(x).reshape(B, T, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]                 # [B, h, T, hd]
        attn = (q * self.scale) @ k.transpose(-2, -1)    # [B, h, T, T]
        attn = attn.softmax(dim=-1)
        x = (attn @ v).transpose(1, 2).reshape(B, T, D)
        return self.proj(x)


class Mlp(nn.Module):
    def __init__(self, dim, hidden):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x):
        return self.fc2(F.gelu(self.fc1(x)))   # exact erf GELU


class Block(nn.Module):
    def __init__(self, dim, num_heads, hidden, skip_lam, drop_path):
        super().__init__()
        self.skip_lam = float(skip_lam)
        self.norm1 = nn.LayerNorm(dim, eps=1e-5)
        self.attn = Attention(dim, num_heads)
        self.drop_path = DropPath(drop_path)
        self.norm2 = nn.LayerNorm(dim, eps=1e-5)
        self.mlp = Mlp(dim, hidden)

    def forward(self, x):
        x = x + self.drop_path(self.attn(self.norm1(x))) / self.skip_lam
        x = x + self.drop_path(self.mlp(self.norm2(x))) / self.skip_lam
        return x


def box_is_empty(box):
    return box is None or box[0] >= box[2] or box[1] >= box[3]


def _clip_box(box, g):
    r0, c0, r1, c1 = (int(v) for v in box)
    r0, r1 = max(0, min(g, r0)), max(0, min(g, r1))
    c0, c1 = max(0, min(g, c0)), max(0, min(g, c1))
    return r0, c0, r1, c1


def swap_box(x, box, spatial_dims):
    """Returns a copy of x where sample i holds, inside the box, sample B-1-i's
    values. spatial_dims = (row_dim, col_dim). The swap is an involution."""
    r0, c0, r1, c1 = box
    idx = [slice(None)] * x.ndim
    idx[spatial_dims[0]] = slice(r0, r1)
    idx[spatial_dims[1]] = slice(c0, c1)
    idx = tuple(idx)
    y = x.clone()
    y[idx] = x.flip(0)[idx]
    return y


class LVViT(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        cfg.validate()
        self.cfg = cfg
        D = cfg.embed_dim
        self.patch_embed = PatchEmbed4_2(cfg.patch_size, 3, cfg.stem_channels, D)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, D))
        self.pos_embed = nn.Parameter(torch.zeros(1, cfg.tokens + 1, D))
        dpr = [x.item() for x in torch.linspace(0, cfg.drop_path_rate, cfg.depth)]
        self.blocks = nn.ModuleList([
            Block(D, cfg.num_heads, cfg.hidden, cfg.skip_lam, dpr[i]) for i in range(cfg.depth)])
        self.norm = nn.LayerNorm(D, eps=1e-5)
        self.head = nn.Linear(D, cfg.num_classes)
        self.aux_head = nn.Linear(D, cfg.num_classes)
        self.reset_parameters()

    def reset_parameters(self):
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            # Conv2d and BatchNorm2d keep PyTorch's defaults.

    def set_drop_path_rate(self, rate):
        dpr = [x.item() for x in torch.linspace(0, rate, len(self.blocks))]
        for b, p in zip(self.blocks, dpr):
            b.drop_path.p = p

    def forward(self, x, mix_box=None):
        """x [B,3,H,W] normalised. mix_box (r0,c0,r1,c1) half-open on the token
        grid or None; applied only in training mode. Returns (cls [B,K], aux [B,N,K])."""
        g = self.cfg.grid
        x = self.patch_embed(x)                       # [B, D, g, g]
        box = None
        if self.training and mix_box is not None:
            box = _clip_box([int(v) for v in mix_box], g)
            if box_is_empty(box):
                box = None
        if box is not None:
            x = swap_box(x, box, (2, 3))
        B = x.shape[0]
        x = x.flatten(2).transpose(1, 2)              # [B, N, D], row-major
        x = torch.cat([self.cls_token.expand(B, -1, -1), x], dim=1)
        x = x + self.pos_embed
        for blk in self.blocks:
            x = blk(x)
        x = self.norm(x)
        cls = self.head(x[:, 0])
        aux = self.aux_head(x[:, 1:])                 # [B, N, K]
        if box is not None:
            K = aux.shape[-1]
            aux = swap_box(aux.reshape(B, g, g, K), box, (1, 2)).reshape(B, g * g, K)
        return cls, aux


def inference_score(cls, aux):
    return cls + 0.5 * aux.max(1)[0]


def soft_ce(logits, target):
    """Mean over rows of sum_c -t_c log_softmax(x)_c."""
    return torch.sum(-target * F.log_softmax(logits, dim=-1), dim=-1).mean()


def box_lambda(box, grid):
    if box is None:
        return 1.0
    r0, c0, r1, c1 = _clip_box(box, grid)
    if r0 >= r1 or c0 >= c1:
        return 1.0
    return 1.0 - (r1 - r0) * (c1 - c0) / float(grid * grid)


def token_label_loss(cls, aux, t_cls, t_dense, box, grid, cls_weight=1.0, dense_weight=0.5):
    """Returns (loss, loss_cls, loss_dense, lam). Class targets are mixed with
    lam = 1 - area/N; dense targets are not (aux is already swapped back).
    t_dense None means every token's target is its image's (unmixed) t_cls."""
    lam = box_lambda(box, grid)
    t_mix = lam * t_cls + (1.0 - lam) * t_cls.flip(0)
    loss_cls = soft_ce(cls, t_mix)
    K = aux.shape[-1]
    if t_dense is None:
        t_dense = t_cls[:, None, :].expand_as(aux)
    loss_dense = soft_ce(aux.reshape(-1, K), t_dense.reshape(-1, K))
    loss = cls_weight * loss_cls + dense_weight * loss_dense
    return loss, loss_cls, loss_dense, lam


def param_groups(model, weight_decay):
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if p.ndim <= 1 or name in ("cls_token", "pos_embed"):
            no_decay.append(p)
        else:
            decay.append(p)
    return [{"params": no_decay, "weight_decay": 0.0},
            {"params": decay, "weight_decay": weight_decay}]


def decays(name, shape):
    """True when AdamW applies weight decay to a parameter of this name/shape."""
    return len(shape) > 1 and name not in ("cls_token", "pos_embed")


def make_adamw(model, lr, weight_decay=0.05, betas=(0.9, 0.999), eps=1e-8):
    return torch.optim.AdamW(param_groups(model, weight_decay), lr=lr, betas=betas, eps=eps,
                             weight_decay=weight_decay)


def random_mix_box(grid, rng=np.random):
    """Section 4: lam ~ Beta(1,1), cut = int(g*sqrt(1-lam)), centre uniform,
    rows/cols [clip(c - cut//2), clip(c + cut//2)). Returns (r0,c0,r1,c1)."""
    lam = rng.beta(1.0, 1.0)
    cut = int(grid * math.sqrt(1.0 - lam))
    r = rng.randint(grid)
    c = rng.randint(grid)
    r0 = int(np.clip(r - cut // 2, 0, grid))
    r1 = int(np.clip(r + cut // 2, 0, grid))
    c0 = int(np.clip(c - cut // 2, 0, grid))
    c1 = int(np.clip(c + cut // 2, 0, grid))
    return (r0, c0, r1, c1)
