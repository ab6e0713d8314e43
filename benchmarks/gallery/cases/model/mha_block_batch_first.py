"""A ViT-style image classifier whose blocks call nn.MultiheadAttention (batch_first=False) on (batch, patches, dim).

Source: https://github.com/karttikeya/minREV/issues/4
Source: https://github.com/kyegomez/movie-gen/issues/8
Expect: batch-mixing

The hand-written block follows the usual pre-norm recipe, x + attn(norm(x)), with the patch tokens
in (batch, patches, dim) as everywhere else in the model, but nn.MultiheadAttention defaults to
(seq, batch, dim). Each patch then attends to the same patch of the other images in the batch, never
to the other patches of its own image: predictions depend on the batch and the model cannot relate
patches. The fix is nn.MultiheadAttention(..., batch_first=True).
"""

import sys

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

FIXED = "--fixed" in sys.argv
torch.manual_seed(0)
torch.set_num_threads(1)

IMG, PATCH, DIM, CLASSES = 16, 4, 48, 4


class Block(nn.Module):
    def __init__(self, dim, heads):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, heads, dropout=0.0, batch_first=FIXED)  # BUG
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))

    def forward(self, x):
        h = self.norm1(x)
        x = x + self.attn(h, h, h, need_weights=False)[0]
        return x + self.mlp(self.norm2(x))


class TinyViT(nn.Module):
    def __init__(self, depth=2, heads=4):
        super().__init__()
        n_patches = (IMG // PATCH) ** 2
        self.patch_embed = nn.Conv2d(1, DIM, kernel_size=PATCH, stride=PATCH)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, DIM))
        self.pos_embed = nn.Parameter(torch.randn(1, n_patches + 1, DIM) * 0.02)
        self.blocks = nn.ModuleList([Block(DIM, heads) for _ in range(depth)])
        self.norm = nn.LayerNorm(DIM)
        self.head = nn.Linear(DIM, CLASSES)

    def forward(self, img):
        x = self.patch_embed(img).flatten(2).transpose(1, 2)  # (B, N, D)
        x = torch.cat([self.cls_token.expand(x.size(0), -1, -1), x], dim=1) + self.pos_embed
        for blk in self.blocks:
            x = blk(x)
        return self.head(self.norm(x[:, 0]))


def make_images(n):
    """Noise images with one bright 4x4 square; the label is which quadrant holds it."""
    labels = torch.randint(0, CLASSES, (n,))
    imgs = 0.3 * torch.randn(n, 1, IMG, IMG)
    for i, c in enumerate(labels.tolist()):
        top = (c // 2) * 8 + int(torch.randint(0, 5, ()))
        left = (c % 2) * 8 + int(torch.randint(0, 5, ()))
        imgs[i, 0, top:top + 4, left:left + 4] += 2.0
    return imgs, labels


train_loader = DataLoader(TensorDataset(*make_images(2048)), batch_size=32, shuffle=True)
val_x, val_y = make_images(512)

model = TinyViT()
optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.05)

for epoch in range(4):
    model.train()
    for x, y in train_loader:
        loss = F.cross_entropy(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    with torch.no_grad():
        acc = (model(val_x).argmax(1) == val_y).float().mean()
    print(f"epoch {epoch} train loss {loss.item():.3f} val acc {acc:.3f}")
