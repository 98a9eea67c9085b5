"""DetCon building blocks against brute force and hand-made cases (detcon.txt §3.1; spec detcon.md §2.3-2.5)."""

from __future__ import annotations

import math

import torch

from sslkit.methods.detcon_ops import detcon_loss
from sslkit.ops.masks import cell_owners, mask_pool, mask_weights, sample_mask_ids


def brute_force_loss(q1, q2, t1, t2, id1, id2, tau):
    """Row-by-row transcription of the contrastive detection objective (spec detcon.md §2.5)."""
    q1, q2, t1, t2 = (torch.nn.functional.normalize(x.double(), dim=-1) for x in (q1, q2, t1, t2))
    B, K, _ = q1.shape
    total = 0.0
    for q, ida, Tx, idx, Ts in ((q1, id1, t2, id2, t1), (q2, id2, t1, id1, t2)):
        acc = 0.0
        for b in range(B):
            for k in range(K):
                logits, targets = [], []
                for u in range(B):
                    for j in range(K):
                        logits.append(float(q[b, k] @ Tx[u, j]) / tau)
                        targets.append(1.0 if (u == b and ida[b, k] == idx[b, j]) else 0.0)
                for u in range(B):
                    for j in range(K):
                        if u == b and ida[b, k] == ida[b, j]:
                            continue  # same segment, same view: neither positive nor negative
                        logits.append(float(q[b, k] @ Ts[u, j]) / tau)
                        targets.append(0.0)
                npos = sum(targets)
                if npos == 0:
                    continue
                m = max(logits)
                lse = m + math.log(sum(math.exp(x - m) for x in logits))
                ce = -sum(t / npos * (x - lse) for t, x in zip(targets, logits, strict=True))
                dups = int((ida[b] == ida[b, k]).sum())
                acc += ce / dups
        total += acc / (B * K)
    return total


def test_loss_matches_brute_force_with_duplicates_and_unpaired():
    g = torch.Generator().manual_seed(0)
    B, K, D = 3, 5, 8
    q1, q2, t1, t2 = (torch.randn(B, K, D, generator=g) for _ in range(4))
    id1 = torch.tensor([[1, 1, 2, 3, 9], [4, 4, 4, 5, 6], [7, 8, 8, 8, 8]])
    id2 = torch.tensor([[1, 2, 2, 3, 3], [5, 5, 6, 6, 4], [8, 7, 0, 0, 0]])  # 9 has no partner
    got = detcon_loss(q1, q2, t1, t2, id1, id2, tau=0.1)
    want = brute_force_loss(q1, q2, t1, t2, id1, id2, 0.1)
    assert abs(float(got) - want) < 1e-4


def test_loss_minimal_for_matching_positives_and_grows_when_shuffled():
    g = torch.Generator().manual_seed(1)
    B, K, D = 4, 6, 32
    ids = torch.arange(K).repeat(B, 1)
    z = torch.randn(B, K, D, generator=g)
    matched = detcon_loss(z, z, z, z, ids, ids)
    perm = torch.randperm(K, generator=g)
    z2 = z[:, perm]  # the other view's latent for segment k is now another segment's
    shuffled = detcon_loss(z, z2, z, z2, ids, ids)
    assert float(matched) < float(shuffled)
    # nearly orthogonal distinct latents and identical positives: loss near its floor
    eye = torch.eye(B * K).reshape(B, K, B * K)
    assert float(detcon_loss(eye, eye, eye, eye, ids, ids)) < 0.01


def test_unpaired_rows_get_zero_weight():
    z = torch.randn(2, 3, 4)
    id1 = torch.tensor([[1, 2, 3], [1, 2, 3]])
    id2 = torch.tensor([[4, 5, 6], [4, 5, 6]])  # nothing shared across views
    assert float(detcon_loss(z, z, z, z, id1, id2)) == 0.0


def test_cell_owners_majority_and_tie_break():
    lab = torch.tensor([[0, 0, 1, 1], [0, 2, 1, 1], [3, 3, 2, 2], [3, 3, 2, 5]])[None]
    assert cell_owners(lab, (2, 2)).tolist() == [[[0, 1], [3, 2]]]
    tie = torch.tensor([[7, 1], [1, 7]])[None]
    assert cell_owners(tie, (1, 1)).item() == 1  # two each: the smallest id wins
    big = torch.full((1, 4, 4), 300)
    big[0, :2, :2] = 1000  # ids above 255 are kept as they are
    assert cell_owners(big, (2, 2)).tolist() == [[[1000, 300], [300, 300]]]


def test_mask_pool_of_constant_features_is_that_constant():
    feat = torch.full((2, 5, 3, 3), 2.5)
    owners = torch.tensor([[[0, 0, 1], [1, 1, 1], [2, 2, 2]], [[4, 4, 4], [4, 4, 4], [4, 4, 4]]])
    ids = sample_mask_ids(owners, k=16, generator=torch.Generator().manual_seed(0))
    pooled = mask_pool(feat, mask_weights(ids, owners=owners))
    assert pooled.shape == (2, 16, 5) and torch.allclose(pooled, torch.full_like(pooled, 2.5))


def test_mask_pool_is_mean_over_owned_cells():
    feat = torch.arange(9.0).reshape(1, 1, 3, 3)
    owners = torch.tensor([[[0, 0, 1], [1, 1, 1], [2, 2, 2]]])
    ids = torch.tensor([[0, 1, 2]])
    pooled = mask_pool(feat, mask_weights(ids, owners=owners))[0, :, 0]
    assert pooled.tolist() == [0.5, (2 + 3 + 4 + 5) / 4, 7.0]


def test_sampling_covers_only_present_segments_even_when_fewer_than_k():
    owners = torch.tensor([[[3, 3], [3, 9]]])
    ids = sample_mask_ids(owners, k=16, generator=torch.Generator().manual_seed(0))
    assert ids.shape == (1, 16) and set(ids.tolist()[0]) == {3, 9}
    single = sample_mask_ids(torch.zeros(1, 2, 2, dtype=torch.long), k=16)
    assert single.unique().tolist() == [0]
