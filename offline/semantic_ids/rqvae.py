"""RQ-VAE tokenizer (TIGER; SCoTER Table 7): MLP encoder -> residual vector quantisation -> MLP decoder.

Trained with MSE reconstruction + codebook loss + beta * commitment loss, straight-through gradients,
codebooks initialised by k-means on the first batch's residuals. Dead codes (unused in an epoch) are re-seeded
from live residuals early in training so all 256 codes stay in use; the checkpoint with the lowest collision
rate is kept (as LC-Rec does). Runs single-threaded and seeded so the same seed gives identical codes.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

if TYPE_CHECKING:  # pragma: no cover
    from offline.semantic_ids.codes import SemanticIdConfig

log = logging.getLogger(__name__)


def mlp(dims: list[int]) -> nn.Sequential:
    """Linear layers with ReLU between them (none after the last)."""
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(dims[:-1], dims[1:], strict=True)):
        layers.append(nn.Linear(a, b))
        if i < len(dims) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


class ResidualQuantizer(nn.Module):
    """L codebooks; level l quantises the residual left by levels < l (nearest code, lowest index on ties)."""

    def __init__(self, levels: int, codebook_size: int, dim: int) -> None:
        super().__init__()
        self.codebooks = nn.ModuleList(nn.Embedding(codebook_size, dim) for _ in range(levels))
        for cb in self.codebooks:
            nn.init.uniform_(cb.weight, -1.0 / codebook_size, 1.0 / codebook_size)

    @staticmethod
    def nearest(residual: torch.Tensor, codebook: torch.Tensor) -> torch.Tensor:
        d = (residual**2).sum(1, keepdim=True) - 2 * residual @ codebook.T + (codebook**2).sum(1)[None, :]
        return d.argmin(dim=1)

    def forward(
        self, z: torch.Tensor, beta: float
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, list[torch.Tensor]]:
        """Returns (quantised z (straight-through), codes [B, L], vq loss, residual at each level)."""
        residual = z
        z_q = torch.zeros_like(z)
        codes, residuals = [], []
        loss = z.new_zeros(())
        for cb in self.codebooks:
            residuals.append(residual.detach())
            idx = self.nearest(residual, cb.weight)
            q = cb(idx)
            loss = loss + F.mse_loss(q, residual.detach()) + beta * F.mse_loss(residual, q.detach())
            q_st = residual + (q - residual).detach()
            z_q = z_q + q_st
            residual = residual - q_st
            codes.append(idx)
        return z_q, torch.stack(codes, dim=1), loss, residuals


class RQVAE(nn.Module):
    """Encoder 384->512->256->128->32, 4x256 residual codebooks, mirrored decoder (dims from the config)."""

    def __init__(self, in_dim: int, config: SemanticIdConfig) -> None:
        super().__init__()
        dims = [in_dim, *config.hidden_dims, config.latent_dim]
        self.encoder = mlp(dims)
        self.decoder = mlp(dims[::-1])
        self.quantizer = ResidualQuantizer(config.levels, config.codebook_size, config.latent_dim)
        self.beta = config.beta
        # input standardisation (set by `fit_scaler`): unit-norm sentence embeddings have per-dimension variance
        # ~1/384, so raw MSE is tiny next to the VQ loss and the encoder collapses to a constant
        self.register_buffer("x_mean", torch.zeros(in_dim))
        self.register_buffer("x_std", torch.ones(in_dim))

    @torch.no_grad()
    def fit_scaler(self, x: torch.Tensor) -> None:
        self.x_mean.copy_(x.mean(0))
        self.x_std.copy_(x.std(0).clamp_min(1e-6))

    def scale(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.x_mean) / self.x_std

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, list[torch.Tensor]]:
        """x must already be scaled (`scale`); the reconstruction is in scaled space."""
        z_q, codes, vq_loss, residuals = self.quantizer(self.encoder(x), self.beta)
        return self.decoder(z_q), codes, vq_loss, residuals

    @torch.no_grad()
    def encode(self, x: torch.Tensor, batch_size: int = 8192) -> np.ndarray:
        """Code tuples [n, L] for raw (unscaled) inputs [n, in_dim] (eval mode, no gradients)."""
        self.eval()
        out = [
            self.quantizer(self.encoder(self.scale(x[i : i + batch_size])), self.beta)[1]
            for i in range(0, len(x), batch_size)
        ]
        return torch.cat(out).cpu().numpy().astype(np.int64)

    @torch.no_grad()
    def kmeans_init(self, x: torch.Tensor, seed: int) -> None:
        """Set each codebook to k-means centroids of that level's residuals on scaled `x` (sklearn, seeded)."""
        from sklearn.cluster import KMeans

        residual = self.encoder(x)
        k = self.quantizer.codebooks[0].weight.shape[0]
        for lvl, cb in enumerate(self.quantizer.codebooks):
            km = KMeans(n_clusters=k, n_init=1, max_iter=100, random_state=seed + lvl).fit(residual.numpy())
            centers = torch.from_numpy(km.cluster_centers_).to(cb.weight.dtype)
            cb.weight.copy_(centers)
            residual = residual - centers[torch.from_numpy(km.labels_).long()]


@contextlib.contextmanager
def deterministic_torch(num_threads: int) -> Iterator[None]:
    """Fixed thread count + deterministic kernels for the block; restores the previous settings after."""
    from threadpoolctl import threadpool_limits

    prev_threads = torch.get_num_threads()
    prev_det = torch.are_deterministic_algorithms_enabled()
    torch.set_num_threads(num_threads)
    torch.use_deterministic_algorithms(True)
    try:
        with threadpool_limits(limits=num_threads):
            yield
    finally:
        torch.set_num_threads(prev_threads)
        torch.use_deterministic_algorithms(prev_det)


def collision_rate(codes: np.ndarray) -> float:
    return float(1.0 - len(np.unique(codes, axis=0)) / len(codes))


def _reset_dead_codes(
    model: RQVAE, counts: torch.Tensor, residuals: list[torch.Tensor], gen: torch.Generator
) -> int:
    """Replace codes unused this epoch by random residuals of the last batch at that level; returns how many."""
    n_reset = 0
    with torch.no_grad():
        for lvl, cb in enumerate(model.quantizer.codebooks):
            dead = torch.nonzero(counts[lvl] == 0).flatten()
            if len(dead) == 0:
                continue
            pool = residuals[lvl]
            pick = torch.randint(0, len(pool), (len(dead),), generator=gen)
            cb.weight[dead] = pool[pick]
            n_reset += len(dead)
    return n_reset


def train_rqvae(embeddings: np.ndarray, config: SemanticIdConfig) -> tuple[RQVAE, np.ndarray, dict[str, Any]]:
    """Train on item embeddings [n, dim]; returns (model at its lowest-collision checkpoint, codes [n, L], log)."""
    with deterministic_torch(config.num_threads):
        torch.manual_seed(config.seed)
        gen = torch.Generator().manual_seed(config.seed)
        x = torch.from_numpy(np.ascontiguousarray(embeddings, dtype=np.float32))
        n = len(x)
        bs = min(config.batch_size, n)
        model = RQVAE(x.shape[1], config)
        if config.standardize:
            model.fit_scaler(x)
        xs = model.scale(x)
        opt = torch.optim.Adam(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
        if config.kmeans_init:
            first = xs[torch.randperm(n, generator=gen)[:bs]]
            model.kmeans_init(first, config.seed)
        reset_stop = int(config.reset_until * config.epochs)
        best: tuple[float, int, dict[str, torch.Tensor]] | None = None
        history: list[dict[str, float]] = []
        t0 = time.perf_counter()
        for epoch in range(1, config.epochs + 1):
            model.train()
            perm = torch.randperm(n, generator=gen)
            counts = torch.zeros(config.levels, config.codebook_size, dtype=torch.long)
            tot_rec = tot_vq = 0.0
            residuals: list[torch.Tensor] = []
            for i in range(0, n, bs):
                xb = xs[perm[i : i + bs]]
                x_hat, codes, vq_loss, residuals = model(xb)
                rec = F.mse_loss(x_hat, xb)
                loss = rec + vq_loss
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                for lvl in range(config.levels):
                    counts[lvl] += torch.bincount(codes[:, lvl], minlength=config.codebook_size)
                tot_rec += rec.item() * len(xb)
                tot_vq += vq_loss.item() * len(xb)
            n_reset = 0
            if config.dead_code_reset and epoch <= reset_stop:
                n_reset = _reset_dead_codes(model, counts, residuals, gen)
            if epoch % config.eval_every == 0 or epoch == config.epochs:
                rate = collision_rate(model.encode(x))
                used = [int((c > 0).sum()) for c in counts]
                history.append(
                    {"epoch": epoch, "recon": tot_rec / n, "vq": tot_vq / n, "collision_rate": rate}
                )
                # codes are measured on the model as it is now (after any reset), so every checkpoint is eligible
                if best is None or rate < best[0]:
                    best = (rate, epoch, copy.deepcopy(model.state_dict()))
                elapsed = time.perf_counter() - t0
                log.info(
                    "rqvae epoch %d/%d recon %.5f vq %.5f collision %.4f used %s reset %d | %.1fs, %.2f ep/s, ETA %.0fs",
                    epoch,
                    config.epochs,
                    tot_rec / n,
                    tot_vq / n,
                    rate,
                    used,
                    n_reset,
                    elapsed,
                    epoch / elapsed,
                    (config.epochs - epoch) * elapsed / epoch,
                )
        assert best is not None  # the last epoch is always evaluated
        model.load_state_dict(best[2])
        codes = model.encode(x)
        extra = {
            "best_epoch": best[1],
            "train_history": history,
            "train_seconds": round(time.perf_counter() - t0, 2),
        }
        return model, codes, extra
