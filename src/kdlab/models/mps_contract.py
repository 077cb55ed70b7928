"""Feature maps and batched contraction kernels for matrix product states (MPS).

Conventions (shared with :mod:`kdlab.models.mps`):

* ``cores``: ``[K, n, χ, p, χ]`` — ``K`` independent chains of ``n`` site tensors ``A[a, j, b]``
  (left bond ``a``, physical index ``j``, right bond ``b``).
* ``feats``: ``[K, B, n, p]`` — the embedded inputs φ(x) of ``B`` samples on each chain.
* ``start``: ``[K, χ]`` — a boundary vector ``l`` per chain.

All kernels compute, for every chain ``k`` and sample ``b``, the boundary vector

    v(x) = l^T M_1(x) M_2(x) ⋯ M_n(x),   with   M_i(x) = Σ_j φ_j(x_i) A_i[:, j, :],

returned as ``(v / ‖v‖, log ‖v‖)``. Partial products are rescaled by *detached* positive scalars
while contracting and the logs are summed. This is exact, value and gradient: the chain is linear
in each factor, so ``ṽ = c·v`` with a constant ``c`` gives ``ṽ/‖ṽ‖ = v/‖v‖`` and
``∇ log‖ṽ‖ = ∇ log‖v‖``; the summed ``log c`` is added back as a constant.

Three strategies (see :func:`choose_strategy` for the measured rule):

* ``"vector"``: a ``B × χ`` boundary vector times site matrices. All ``M_i(x)`` are formed by
  one batched GEMM, then one batched mat-vec per site (custom backward, one kernel per step) —
  ``O(B·n·p·χ²)`` flops, ``n`` sequential steps, memory ``O(n·B·χ²)``.
* ``"fused"``: the same sweep with φ contracted on the fly, ``v ← Σ_j φ_j (v @ A_i[:, j, :])``,
  never forming the site matrices — same flops, memory ``O(n·B·p·χ)``, two kernels per step.
* ``"tree"``: form all ``M_i(x)`` and multiply adjacent pairs in parallel, ``⌈log₂ n⌉``
  levels — ``O(B·n·χ³)`` flops, memory ``O(n·B·χ²)``.

Sites can be merged in groups of ``g`` (:func:`group_sites`): the merged core of a group is the
input-independent product of its cores (physical dimension ``p^g``, cost paid once per batch)
and the merged feature is ``φ(x_1) ⊗ ⋯ ⊗ φ(x_g)``. This divides the number of sequential steps
by ``g``, which matters far more than flops on a CPU at these sizes.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

FEATURE_MAPS = ("affine", "trig", "poly")
STRATEGIES = ("auto", "vector", "fused", "tree")


def feature_dim(feature_map: str, degree: int = 2) -> int:
    """Physical dimension ``p`` of a feature map: 2 for affine and trig, ``degree + 1`` for poly."""
    return degree + 1 if feature_map == "poly" else 2


def embed(x: Tensor, feature_map: str, degree: int = 2) -> Tensor:
    """Map ``x`` of shape ``[..., d]`` (entries in [0, 1]) to ``φ(x)`` of shape ``[..., d, p]``.

    * ``"affine"``: φ(x) = [1, x]                        (seed 000, Novikov et al. 2016)
    * ``"trig"``:   φ(x) = [cos(πx/2), sin(πx/2)]        (Stoudenmire & Schwab 2016)
    * ``"poly"``:   φ(x) = [1, x, x², …, x^degree]
    """
    if feature_map == "affine":
        return torch.stack((torch.ones_like(x), x), dim=-1)
    if feature_map == "trig":
        a = x * (math.pi / 2)
        return torch.stack((torch.cos(a), torch.sin(a)), dim=-1)
    if feature_map == "poly":
        return torch.stack([x**k for k in range(degree + 1)], dim=-1)
    raise ValueError(f"unknown feature map {feature_map!r}; valid maps: {', '.join(FEATURE_MAPS)}")


def identity_weights(feature_map: str, degree: int = 2) -> list[float]:
    """Weights ``w`` with ``w·φ(x) ≥ 1`` on [0, 1], so ``A[:, j, :] = w_j I`` gives ``M(x) ∝ I``.

    affine/poly: ``w = e_0`` (``M(x) = I``); trig: ``w = [1, 1]`` (``M(x) = (cos + sin)·I``, a
    scalar in [1, √2] that the log-scale absorbs).
    """
    if feature_map == "trig":
        return [1.0, 1.0]
    return [1.0] + [0.0] * (feature_dim(feature_map, degree) - 1)


def _merge_order(n: int, levels: int) -> Tensor:
    """Site order that makes every pair merge of :func:`group_sites` take two contiguous halves.

    Level 1 pairs sites (2k, 2k+1), so evens then odds; each half is itself in the order the
    next level needs, so ``order(n, L) = [2·q, 2·q + 1]`` with ``q = order(n/2, L-1)``.
    """
    if levels == 0:
        return torch.arange(n)
    q = _merge_order(n // 2, levels - 1)
    return torch.cat((2 * q, 2 * q + 1))


def _merge_pairs(cores: Tensor, feats_pm: Tensor) -> tuple[Tensor, Tensor]:
    """Merge sites (2m, 2m+1): ``C[a, (j,j'), c] = Σ_b A[a, j, b] A'[b, j', c]``, φ ⊗ φ'.

    ``feats_pm`` is ``[K, p, B, n]`` (physical index first) in :func:`_merge_order`, so the
    Kronecker product multiplies two contiguous halves (a trailing ``p × p`` one is slow).
    """
    k, n, chi, p, _ = cores.shape
    a, b = cores[:, 0::2], cores[:, 1::2]
    merged = torch.matmul(a.reshape(k, n // 2, chi * p, chi), b.reshape(k, n // 2, chi, p * chi))
    half = feats_pm.shape[-1] // 2
    fa, fb = feats_pm[..., :half], feats_pm[..., half:]
    f = (fa.unsqueeze(2) * fb.unsqueeze(1)).reshape(k, p * p, *fa.shape[2:])
    return merged.reshape(k, n // 2, chi, p * p, chi), f


def pad_sites(cores: Tensor, feats: Tensor, n_total: int) -> tuple[Tensor, Tensor]:
    """Append identity sites (core ``A[:, 0, :] = I``, feature ``e_0``) up to ``n_total`` sites."""
    k, n, chi, p, _ = cores.shape
    extra = n_total - n
    if extra <= 0:
        return cores, feats
    pad_core = cores.new_zeros(k, extra, chi, p, chi)
    pad_core[:, :, :, 0, :] = torch.eye(chi, dtype=cores.dtype, device=cores.device)
    pad_feat = feats.new_zeros(*feats.shape[:2], extra, p)
    pad_feat[..., 0] = 1.0
    return torch.cat((cores, pad_core), dim=1), torch.cat((feats, pad_feat), dim=2)


def group_sites(cores: Tensor, feats: Tensor, group: int) -> tuple[Tensor, Tensor]:
    """Merge consecutive sites in groups of ``group`` (a power of two), padding with identities."""
    if group < 1 or group & (group - 1):
        raise ValueError(f"group must be a power of two >= 1, got {group}")
    n = cores.shape[1]
    cores, feats = pad_sites(cores, feats, -(-n // group) * group)
    levels = group.bit_length() - 1
    order = _merge_order(cores.shape[1], levels).to(feats.device)
    feats_pm = feats.permute(0, 3, 1, 2)[..., order]
    while group > 1:
        cores, feats_pm = _merge_pairs(cores, feats_pm)
        group //= 2
    return cores, feats_pm.permute(0, 2, 3, 1)


def _unit(v: Tensor) -> tuple[Tensor, Tensor]:
    """``(v/‖v‖, log‖v‖)`` over the last dimension, with the gradient of the norm kept."""
    norm = torch.linalg.vector_norm(v, dim=-1)
    return v / norm.unsqueeze(-1), torch.log(norm)


class _MatVecChain(torch.autograd.Function):
    """``v_{i+1} = v_i M_i`` for i = 0…n-1 (batched over samples), one ``bmm`` per step.

    Written as a Function so that each step is a single kernel in both directions: the forward
    writes into a preallocated ``[n+1, …]`` buffer, the backward carries ``g_i = g_{i+1} M_iᵀ``
    and forms every ``∂/∂M_i = v_iᵀ g_{i+1}`` in one broadcast product at the end. Every
    ``renorm_every`` steps the vector is divided by ``‖v‖`` (a constant, see module doc).
    First-order only: for double backward use the ``"fused"`` or ``"tree"`` strategy.
    """

    @staticmethod
    def forward(ctx, mats: Tensor, start: Tensor, renorm_every: int) -> tuple[Tensor, Tensor]:  # type: ignore[override]
        n, kb, chi, _ = mats.shape
        vs = mats.new_empty(n + 1, kb, 1, chi)
        vs[0] = start
        steps = [i for i in range(n - 1) if (i + 1) % renorm_every == 0]
        norms = mats.new_ones(max(len(steps), 1), kb, 1, 1)
        slot = {i: j for j, i in enumerate(steps)}
        v_l, m_l, n_l = vs.unbind(0), mats.unbind(0), norms.unbind(0)
        for i in range(n):
            torch.bmm(v_l[i], m_l[i], out=v_l[i + 1])
            j = slot.get(i)
            if j is not None:
                torch.linalg.vector_norm(v_l[i + 1], dim=-1, keepdim=True, out=n_l[j])
                v_l[i + 1].div_(n_l[j].clamp_min_(1e-30))
        ctx.save_for_backward(mats, vs, norms)
        ctx.slot = slot
        log_scale = norms.log().sum(0).view(kb)
        ctx.mark_non_differentiable(log_scale)
        return vs[n].clone(), log_scale

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_v: Tensor, _grad_log: Tensor) -> tuple[Tensor, Tensor, None]:  # type: ignore[override]
        mats, vs, norms = ctx.saved_tensors
        n, kb, chi, _ = mats.shape
        gs = mats.new_empty(n + 1, kb, 1, chi)
        gs[n] = grad_v
        g_l, mt_l, n_l = gs.unbind(0), mats.transpose(-1, -2).unbind(0), norms.unbind(0)
        for i in range(n - 1, -1, -1):
            j = ctx.slot.get(i)
            if j is not None:
                g_l[i + 1].div_(n_l[j])  # now the gradient of v_i M_i before rescaling
            torch.bmm(g_l[i + 1], mt_l[i], out=g_l[i])
        return vs[:n].transpose(-1, -2) * gs[1:], gs[0], None


def contract_vector(
    cores: Tensor, feats: Tensor, start: Tensor, renorm_every: int = 4
) -> tuple[Tensor, Tensor]:
    """Boundary vector times site matrices: ``v ← v M_i(x)``, ``M_i(x)`` formed up front.

    All ``M_i(x) = Σ_j φ_j(x_i) A_i[:, j, :]`` come from one batched GEMM (``B·n·p·χ²``
    flops, memory ``n·B·χ²``), then one batched mat-vec per site (:class:`_MatVecChain`).
    Returns ``(v/‖v‖ [K, B, χ], log‖v‖ [K, B])``.
    """
    k, n, chi, p, _ = cores.shape
    bsz = feats.shape[1]
    f = feats.permute(2, 0, 1, 3).reshape(n * k, bsz, p)
    c = cores.transpose(0, 1).permute(0, 1, 3, 2, 4).reshape(n * k, p, chi * chi)
    mats = torch.bmm(f, c).view(n, k * bsz, chi, chi)
    start_b = start.unsqueeze(1).expand(k, bsz, chi).reshape(k * bsz, 1, chi)
    v, log_scale = _MatVecChain.apply(mats, start_b, renorm_every)
    v, log_norm = _unit(v.view(k, bsz, chi))
    return v, log_scale.view(k, bsz) + log_norm


def contract_fused(
    cores: Tensor, feats: Tensor, start: Tensor, renorm_every: int = 4
) -> tuple[Tensor, Tensor]:
    """Boundary vector with φ contracted on the fly: ``v ← Σ_j φ_j(x_i) (v @ A_i[:, j, :])``.

    Never forms the ``B·χ²`` site matrices: one GEMM ``[B, χ] @ [χ, p·χ]`` per site, so the
    flops per site are ``B·p·χ²`` and memory ``O(n·B·p·χ)``; two ops per site (plus autograd's).
    The vector is rescaled by its (detached) norm every ``renorm_every`` sites.
    Returns ``(v/‖v‖ [K, B, χ], log‖v‖ [K, B])``.
    """
    k, n, chi, p, _ = cores.shape
    bsz = feats.shape[1]
    # Per-site views via unbind: its backward stacks all gradients once (indexing would not).
    site_cores = cores.reshape(k, n, chi, p * chi).unbind(1)
    site_feats = feats.permute(2, 0, 1, 3).reshape(n, k * bsz, 1, p).unbind(0)
    v = start.unsqueeze(1).expand(k, bsz, chi)
    log_scale = feats.new_zeros(k, bsz)
    for i in range(n):
        t = torch.bmm(v, site_cores[i]).view(k * bsz, p, chi)
        v = torch.bmm(site_feats[i], t).view(k, bsz, chi)
        if (i + 1) % renorm_every == 0 and i + 1 < n:
            norm = torch.linalg.vector_norm(v.detach(), dim=-1).clamp_min(1e-30)
            v = v / norm.unsqueeze(-1)
            log_scale = log_scale + torch.log(norm)
    v, log_norm = _unit(v)
    return v, log_scale + log_norm


def contract_tree(cores: Tensor, feats: Tensor, start: Tensor) -> tuple[Tensor, Tensor]:
    """Balanced tree: build ``M_i(x)`` for all sites, multiply adjacent pairs level by level.

    Every pair product is rescaled by its (detached) largest entry. An odd last matrix is
    carried to the next level. Returns ``(v/‖v‖ [K, B, χ], log‖v‖ [K, B])``.
    """
    k, n, chi, p, _ = cores.shape
    bsz = feats.shape[1]
    # M[k, i, b] = Σ_j φ_j(x_bi) A_i[:, j, :] as one batched GEMM over (k, i).
    f = feats.permute(0, 2, 1, 3).reshape(k * n, bsz, p)
    c = cores.permute(0, 1, 3, 2, 4).reshape(k * n, p, chi * chi)
    mats = torch.bmm(f, c).view(k, n, bsz, chi, chi)
    log_scale = feats.new_zeros(k, bsz)
    while mats.shape[1] > 1:
        m = mats.shape[1]
        prod = torch.matmul(mats[:, 0 : m - 1 : 2], mats[:, 1:m:2])
        scale = prod.detach().abs().amax(dim=(-2, -1)).clamp_min(1e-30)
        prod = prod / scale[..., None, None]
        log_scale = log_scale + torch.log(scale).sum(dim=1)
        mats = torch.cat((prod, mats[:, m - 1 :]), dim=1) if m % 2 else prod
    v = torch.matmul(start.unsqueeze(1).unsqueeze(2), mats[:, 0]).squeeze(2)
    v, log_norm = _unit(v)
    return v, log_scale + log_norm


def choose_strategy(bond_dim: int, phys_dim: int) -> tuple[str, int]:
    """Measured rule: ``(strategy, group)`` for bond dimension χ and physical dimension p.

    * χ ≤ 2: ``"tree"``, group g = the largest power of two with ``p^g ≤ 16``;
    * 2 < χ ≤ 16: ``"vector"``, same g (4 for p = 2, 2 for p = 3 or 4);
    * χ > 16: ``"fused"``, ``g = 2`` if ``p²·χ ≤ 128`` else ``g = 1``.

    Measured by ``benchmarks/bench_mps.py`` (forward+backward of an :class:`~kdlab.models.mps.MPS`,
    784 sites, batch 100, 1 thread, 2-core AMD EPYC shared with other jobs; median ms, p = 2,
    each strategy with its :func:`default_group`):

    ====  ======  =====  =====  ===========================================
    χ     vector  fused  tree   choice
    ====  ======  =====  =====  ===========================================
    2     6.2     11.2   6.3    tree (a tie; at χ = 1 the tree won 3.3 : 5.1)
    4     8.0     11.3   11.1   vector
    8     13.3    16.6   20.9   vector
    10    16.2    17.6   39.4   vector
    16    23.8    30.3   66.6   vector
    24    78.5    39.1   —      fused
    30    154.3   75.5   —      fused (g = 2; at χ = 48 g = 1 beat g = 2, 181 : 204)
    ====  ======  =====  =====  ===========================================

    The tree does ``O(χ³)`` work per site, the vector strategies ``O(p^g·χ²/g)``; "vector" pays
    one kernel per step but holds all ``B·χ²`` site matrices, "fused" holds none but pays two
    (plus autograd's) per step, so it wins once the site matrices get large.
    """
    strategy = "tree" if bond_dim <= 2 else "vector" if bond_dim <= 16 else "fused"
    return strategy, default_group(strategy, bond_dim, phys_dim)


def default_group(strategy: str, bond_dim: int, phys_dim: int) -> int:
    """Site grouping per strategy: ``p^g ≤ 16`` for vector and tree; for fused ``g = 2`` if
    ``p²·χ ≤ 128`` else 1 (its per-step GEMM grows with ``p^g·χ``)."""
    if strategy == "fused":
        return 2 if phys_dim * phys_dim * bond_dim <= 128 else 1
    return max(g for g in (1, 2, 4, 8) if phys_dim**g <= 16 or g == 1)


def contract(
    cores: Tensor, feats: Tensor, start: Tensor, strategy: str = "auto", group: int | None = None
) -> tuple[Tensor, Tensor]:
    """Contract ``K`` chains with the chosen strategy and site grouping (``None``: by the rule)."""
    chi, p = cores.shape[2], cores.shape[3]
    if strategy == "auto":
        strategy = choose_strategy(chi, p)[0]
    group = default_group(strategy, chi, p) if group is None else group
    if group > 1:
        cores, feats = group_sites(cores, feats, group)
    if strategy == "vector":
        return contract_vector(cores, feats, start)
    if strategy == "fused":
        return contract_fused(cores, feats, start)
    if strategy == "tree":
        return contract_tree(cores, feats, start)
    raise ValueError(f"unknown contraction {strategy!r}; valid: {', '.join(STRATEGIES)}")
