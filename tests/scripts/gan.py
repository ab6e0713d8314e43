"""A tiny GAN on 2-d points: a generator and a discriminator, each with its own Adam, the
discriminator stepped first on real and fake points, then the generator through it. Healthy; with
"adamw" the discriminator's optimizer is AdamW, whose default weight decay also hits its biases (a
hint that belongs on the discriminator's optimizer line, not the generator's)."""

import sys

import torch
import torch.nn as nn
import torch.nn.functional as F

torch.manual_seed(0)
torch.set_num_threads(1)
Z, B = 8, 64
gen = nn.Sequential(nn.Linear(Z, 32), nn.ReLU(), nn.Linear(32, 2))
disc = nn.Sequential(nn.Linear(2, 32), nn.LeakyReLU(0.2), nn.Linear(32, 1))
opt_g = torch.optim.Adam(gen.parameters(), lr=1e-3, betas=(0.5, 0.999))
opt_d = (torch.optim.AdamW if "adamw" in sys.argv[1:] else torch.optim.Adam)(disc.parameters(), lr=1e-3,
                                                                             betas=(0.5, 0.999))
ones, zeros = torch.ones(B, 1), torch.zeros(B, 1)
for _ in range(60):
    angle = torch.rand(B) * 6.2832
    real = torch.stack([angle.cos(), angle.sin()], 1) + 0.05 * torch.randn(B, 2)
    fake = gen(torch.randn(B, Z))
    d_loss = F.binary_cross_entropy_with_logits(disc(real), ones) \
        + F.binary_cross_entropy_with_logits(disc(fake.detach()), zeros)
    opt_d.zero_grad()
    d_loss.backward()
    opt_d.step()
    g_loss = F.binary_cross_entropy_with_logits(disc(fake), ones)
    opt_g.zero_grad()
    g_loss.backward()
    opt_g.step()
print(f"done d={d_loss.item():.3f} g={g_loss.item():.3f}")
