"""The item-aware output of a generative backbone: semantic-ID prefix heads that prune, an item-tied leaf that ranks.

Why: a code decoder whose output table is shared across prefixes gives a rare item no parameters of its own, so it
only gets gradient when it is a target and then competes with its popular siblings. Here the leaf is a softmax over
items whose weights are the encoder's own input item embeddings (tied, as SASRec does), and the coarse code
prefixes get heads of their own (a softmax over all nodes of their depth), which share what a cluster of items
has in common with its rare members. A beam at depth l keeps the best prefixes among the children of the survivors
at depth l-1; a prefix scores the leaf's probability mass under it plus its coarse prefixes' log-probabilities;
the last depth reaches items. The trie constraint stays exact: every result is a real item.

Training is all-position: one encoder pass per user sequence with this loss at every position.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from offline.semantic_ids.trie import prefix_node_ids

NEG_INF = float("-inf")


class ItemAwareHead(nn.Module):
    """Own output vectors for the coarse trie depths (1..``prefix_depths``) plus a bias per item for the tied leaf.

    Deeper prefixes get no table: on catalogues of this size their nodes are nearly one per item, so a table there
    would cost as much as the leaf and add nothing; the beam scores them by the leaf's probability mass under them.
    ``prefix_weight`` scales the prefix cross-entropies in the loss; ``prior_weight`` scales the prefix
    log-probabilities the beam adds to a candidate's score (0: the beam ranks by the leaf alone)."""

    def __init__(self, codes: torch.Tensor, d: int, prefix_depths: int = 1, prefix_weight: float = 1.0,
                 prior_weight: float = 0.0) -> None:
        super().__init__()
        nodes = prefix_node_ids(codes[1:].cpu().numpy())
        self.prefix_weight = prefix_weight
        self.prior_weight = prior_weight
        self.depths = len(nodes)  # prefix depths 1..L-1 the beam passes through
        self.prefix_depths = min(prefix_depths, self.depths)
        for depth, ids in enumerate(nodes, start=1):
            # entry 0 = the padding item, mapped to node 0 (it is never a target and its mass is zero)
            self.register_buffer(f"node_of_item_{depth}", torch.from_numpy(np.concatenate([[0], ids])),
                                 persistent=False)
        self.n_nodes = [int(ids.max()) + 1 for ids in nodes]
        self.prefix = nn.ModuleList(nn.Embedding(self.n_nodes[j], d) for j in range(self.prefix_depths))
        self.prefix_bias = nn.ParameterList(nn.Parameter(torch.zeros(self.n_nodes[j])) for j in range(self.prefix_depths))
        for emb in self.prefix:
            nn.init.normal_(emb.weight, std=d**-0.5)
        self.item_bias = nn.Parameter(torch.zeros(codes.shape[0]))

    def node_of_item(self, depth: int) -> torch.Tensor:
        return getattr(self, f"node_of_item_{depth}")

    def prefix_log_probs(self, h: torch.Tensor, depth: int) -> torch.Tensor:
        """h [N,d] -> log-probabilities over all depth-``depth`` nodes [N, n_nodes] (depth <= prefix_depths)."""
        logits = h @ self.prefix[depth - 1].weight.T + self.prefix_bias[depth - 1]
        return torch.log_softmax(logits.float(), -1)

    def item_logits(self, h: torch.Tensor, item_table: torch.Tensor) -> torch.Tensor:
        """h [N,d], item_table [n_items+1, d] (row 0 = padding) -> logits of the real items [N, n_items]."""
        return (h @ item_table[1:].T + self.item_bias[1:]).float()

    def item_log_probs(self, h: torch.Tensor, item_table: torch.Tensor) -> torch.Tensor:
        """Log-probabilities over [0..n_items] [N, n_items+1], the padding column at -inf."""
        lp = torch.log_softmax(self.item_logits(h, item_table), -1)
        return torch.cat([torch.full_like(lp[:, :1], NEG_INF), lp], dim=1)

    def loss(self, h: torch.Tensor, targets: torch.Tensor, item_table: torch.Tensor) -> tuple[torch.Tensor, dict]:
        """Cross-entropy of the target among all items plus, weighted, of its prefix at each coarse depth."""
        item = F.cross_entropy(self.item_logits(h, item_table), targets - 1)  # targets are >= 1
        parts = {"ce": float(item.detach())}
        total = item
        if self.prefix_depths and self.prefix_weight > 0:
            prefix = sum(
                F.nll_loss(self.prefix_log_probs(h, depth), self.node_of_item(depth)[targets])
                for depth in range(1, self.prefix_depths + 1)
            ) / self.prefix_depths
            parts["prefix"] = float(prefix.detach())
            total = total + self.prefix_weight * prefix
        return total, parts

    def item_scores(self, h: torch.Tensor, item_table: torch.Tensor) -> torch.Tensor:
        """What the beam ranks items by, for every item [N, n_items+1]: the leaf's log-probability plus the
        weighted prefix log-probabilities of the item's coarse prefixes (the exhaustive reference)."""
        scores = self.item_log_probs(h, item_table)
        prior_depths = self.prefix_depths if self.prior_weight else 0
        for depth in range(1, prior_depths + 1):
            prior = self.prior_weight * self.prefix_log_probs(h, depth)
            scores = scores + prior.gather(1, self.node_of_item(depth).expand(h.shape[0], -1))
        return scores

    def log_mass(self, probs: torch.Tensor, shift: torch.Tensor, depth: int) -> torch.Tensor:
        """log of the leaf's probability mass under every depth-``depth`` node [N, n_nodes], from the shifted item
        probabilities ``probs`` = exp(item log-prob - shift) (shift = each row's best item log-prob, so no node
        with a reachable item underflows to zero mass)."""
        mass = torch.zeros(probs.shape[0], self.n_nodes[depth - 1], device=probs.device)
        index = self.node_of_item(depth).expand(probs.shape[0], -1)
        mass = mass.scatter_add(1, index, probs)  # ONNX ScatterElements, reduction "add"
        return torch.log(mass) + shift


def item_aware_beam_search(
    model: nn.Module,
    history: torch.Tensor,
    trie: nn.Module,
    beam: int,
    topk: int,
    reasoning: torch.Tensor | None = None,
    present: torch.Tensor | None = None,
    exclude: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Trie-constrained beam over the semantic-ID depths, then the leaf: (items [B,beam], scores [B,beam]).
    ``exclude`` [B,T] (item ids, 0 = padding): items given zero leaf mass before the beam, so never returned.

    A candidate's score is the log of the leaf's probability mass under its prefix plus the weighted prefix-head
    log-probabilities of its coarse prefixes; at the last depth the mass is the item's own probability. Unsorted;
    the caller orders by (score, item). Traceable: a fixed loop over code positions, gathers, scatter-add, topk."""
    head: ItemAwareHead = model.head
    mem, _ = model.memory(history, reasoning, present)
    h = mem[:, -1]
    B = h.shape[0]
    device = h.device
    item_lp = head.item_log_probs(h, model.item_table())
    vote = model.reasoning_vote(reasoning, present)  # the chain's recommendation step, where the fusion has one
    if vote is not None:
        item_lp = item_lp + vote
    if exclude is not None:  # column 0 (padding) is -inf already
        item_lp = item_lp.scatter(1, exclude, NEG_INF)
    shift = item_lp.max(dim=1, keepdim=True).values.clamp(min=-1e30)  # finite even if every item is excluded
    probs = torch.exp(item_lp - shift)
    prior_depths = head.prefix_depths if head.prior_weight else 0  # no prior: the prefix heads are not run at all
    prior = [head.prior_weight * head.prefix_log_probs(h, d) for d in range(1, prior_depths + 1)]
    width = 1
    node = torch.zeros(B, 1, dtype=torch.long, device=device)
    ancestors = torch.zeros(B, 1, device=device)  # summed prior of each beam's coarse prefixes so far
    scores = ancestors
    for pos in range(trie.levels):
        child = trie.table(pos)[node]  # [B, width, V], -1 where the prefix does not exist
        V = child.shape[-1]
        flat = child.reshape(B, width * V)
        safe = flat.clamp(min=0)
        depth = pos + 1
        if depth <= head.depths:
            own = head.log_mass(probs, shift, depth).gather(1, safe)
        else:
            own = item_lp.gather(1, trie.leaf_item[safe])
        anc = ancestors.repeat_interleave(V, dim=1)
        if depth <= prior_depths:
            anc = anc + prior[depth - 1].gather(1, safe)
        dead = torch.isinf(scores).repeat_interleave(V, dim=1)  # a dead beam (fewer prefixes than beams) stays dead
        cand = (own + anc).masked_fill((flat < 0) | dead, NEG_INF)
        k = min(beam, width * V)
        scores, idx = torch.topk(cand, k, dim=1)
        node = safe.gather(1, idx)
        ancestors = anc.gather(1, idx)
        width = k
    if width < beam:  # fewer leaves than beams (tiny catalogues): pad with dead beams
        pad = beam - width
        scores = torch.cat([scores, torch.full((B, pad), NEG_INF, device=device)], dim=1)
        node = torch.cat([node, torch.zeros(B, pad, dtype=torch.long, device=device)], dim=1)
    items = trie.leaf_item[node].masked_fill(torch.isinf(scores), 0)
    return items, scores
