"""A depth-map regressor whose (B, 1, H, W) prediction meets a (B, H, W) target in F.smooth_l1_loss.

Source: https://github.com/jiwei0921/CoNet/issues/3
Source: https://github.com/pytorch/pytorch/pull/18565
Expect: loss-broadcast

The depth maps come out of the dataset without a channel axis, so the loss broadcasts
(B, 1, H, W) against (B, H, W) into (B, B, H, W): every predicted map is scored against every
target map of the batch and the network learns the batch's average depth, not the depth of its own
image (torch only warns). The fix is target.unsqueeze(1).
"""

import sys

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

FIXED = "--fixed" in sys.argv
torch.manual_seed(0)
torch.set_num_threads(1)


class SyntheticDepth(Dataset):
    """RGB images of a tilted plane plus a bump; the depth map (H, W) is a function of the pixels."""

    def __init__(self, n=512, size=24):
        yy, xx = torch.meshgrid(torch.linspace(-1, 1, size), torch.linspace(-1, 1, size), indexing="ij")
        g = torch.Generator().manual_seed(0)
        a, b, c = (torch.rand(n, 1, 1, generator=g) * 2 - 1 for _ in range(3))
        cx, cy = (torch.rand(n, 1, 1, generator=g) * 1.2 - 0.6 for _ in range(2))
        bump = torch.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / 0.1)
        self.depth = 2 + a * xx + b * yy + c * bump
        shade = torch.stack([self.depth, torch.sin(3 * self.depth), torch.cos(3 * self.depth)], dim=1)
        self.rgb = shade + 0.05 * torch.randn(shade.shape, generator=g)

    def __len__(self):
        return len(self.depth)

    def __getitem__(self, i):
        return self.rgb[i], self.depth[i]


class DepthNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.encoder = nn.Sequential(
            nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(),
            nn.Conv2d(16, 32, 3, padding=1, stride=2), nn.ReLU(),
            nn.Conv2d(32, 32, 3, padding=1), nn.ReLU(),
        )
        self.decoder = nn.Sequential(
            nn.ConvTranspose2d(32, 16, 2, stride=2), nn.ReLU(),
            nn.Conv2d(16, 1, 3, padding=1),
        )

    def forward(self, rgb):
        return self.decoder(self.encoder(rgb))


loader = DataLoader(SyntheticDepth(), batch_size=8, shuffle=True)
model = DepthNet()
optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
for epoch in range(3):
    for i, (rgb, depth) in enumerate(loader):
        pred_depth = model(rgb)
        if FIXED:
            depth = depth.unsqueeze(1)
        loss = F.smooth_l1_loss(pred_depth, depth, reduction="sum")  # BUG
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if i % 20 == 0:
            print(f"epoch {epoch} iter {i}: loss {loss.item():.2f}")
    with torch.no_grad():
        rgb, depth = loader.dataset[:64]
        mae = (model(rgb).squeeze(1) - depth).abs().mean()
    print(f"epoch {epoch}: mean abs depth error {mae:.3f}")
