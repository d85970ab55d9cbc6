"""Direct float64 transcriptions of METHOD.md's equations, written for readability, not speed.

They are the reference the fast implementation is compared against; every loop and ``exp`` here
follows the formula literally.
"""
import math

import torch

EPS = 1e-6  # arccos clamp, as METHOD.md section 4


def unit(v):
    return v / v.norm(dim=-1, keepdim=True).clamp_min(1e-12)


def select(z, e):
    """eqs. 8-9: k*(i) = argmax_k hat(z_i).hat(e_k); z_q,i = e_k* (raw)."""
    cos = unit(z) @ unit(e).T
    k = cos.argmax(dim=1)
    return k, e[k]


def vq_loss(z, zq, beta, legacy=True):
    """taming's loss: legacy puts beta on the codebook term."""
    commit = ((zq.detach() - z) ** 2).mean()
    codebook = ((zq - z.detach()) ** 2).mean()
    return commit + beta * codebook if legacy else beta * commit + codebook


def arc_loss(z, e, s=10.0, m=0.1, top_k=3):
    """eqs. 10-12 literally: a sum over codes of -log(sum_pos exp / sum_all exp)."""
    e = e.detach()
    K, N = e.shape[0], z.shape[0]
    total = 0.0
    for k in range(K):
        c = torch.stack([unit(e[k]) @ unit(z[i]) for i in range(N)])
        pos = set(c.topk(top_k).indices.tolist())
        logits = []
        for i in range(N):
            if i in pos:
                theta = torch.acos(c[i].clamp(-1 + EPS, 1 - EPS))
                logits.append(s * torch.cos(theta + m))
            else:
                logits.append(s * c[i])
        num = sum(torch.exp(logits[i]) for i in pos)
        den = sum(torch.exp(l) for l in logits)
        total = total - torch.log(num / den)
    return total / K


def bound(e, alpha, t):
    """eqs. 5-7: e_k <- e_k * min(1, R(t)/||e_k||), R(t) = exp(alpha t)."""
    R = math.exp(alpha * t)
    return torch.stack([row * min(1.0, R / row.norm().item()) for row in e])


def arc_weight(gamma, delta, t):
    """eq. 13: lambda(t) = gamma0 exp(-delta t)."""
    return gamma * math.exp(-delta * t)
