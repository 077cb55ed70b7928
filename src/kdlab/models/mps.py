"""Tensor-network students: a matrix product state (MPS) classifier and its two-layer stack.

An :class:`MPS` computes one logit per class (seed 000, Stoudenmire & Schwab 2016)

    f_c(x) = ⟨Θ_c, φ(x_1) ⊗ φ(x_2) ⊗ ⋯ ⊗ φ(x_d)⟩,

with the weight tensor Θ held as a chain of site cores ``A_i`` of shape ``[χ, p, χ]`` and one
output core ``O`` of shape ``[χ, C, χ]`` placed between sites ``m - 1`` and ``m`` (``m = d // 2``
by default, the customary middle position):

    f_c(x) = l^T M_1(x) ⋯ M_m(x) · O[:, c, :] · M_{m+1}(x) ⋯ M_d(x) r,
    M_i(x) = Σ_j φ_j(x_i) A_i[:, j, :],      l = r = e_0 (fixed; A_1 and A_d absorb any other).

Write ``L(x) = l^T M_1⋯M_m`` and ``R(x) = M_{m+1}⋯M_d r``, so ``f_c = L^T O_c R``. With the
affine map φ(x) = [1, x], every f_c is multilinear (affine in each x_i); :class:`StackedMPS`
(seed eq. 13) feeds the outputs of a first MPS into a second one to reach higher degrees.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from kdlab.errors import ConfigError, KdlabError
from kdlab.models.mps_contract import (
    FEATURE_MAPS,
    STRATEGIES,
    contract,
    embed,
    feature_dim,
    identity_weights,
    pad_sites,
)

__all__ = ["MPS", "MPSInputError", "StackedMPS"]

NORMALIZE = ("per_sample", "none")
LINKS = ("sigmoid", "linear")


class MPSInputError(KdlabError, ValueError):
    """The inputs given to an MPS have the wrong size or lie outside [0, 1]."""


def _check_int(name: str, value: int, minimum: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise ConfigError(f"{name} must be an integer >= {minimum}, got {value!r}")


def _check_choice(name: str, value: str, valid: tuple[str, ...]) -> None:
    if value not in valid:
        what = "feature map" if name == "feature_map" else name
        raise ConfigError(f"unknown {what} {value!r}; valid: {', '.join(valid)}")


class MPS(nn.Module):
    """MPS classifier ``f(x) = ⟨Θ, φ(x_1) ⊗ ⋯ ⊗ φ(x_d)⟩`` returning logits ``[B, num_classes]``.

    Inputs of any shape ``[B, ...]`` are flattened to ``[B, in_features]``; **every entry must
    lie in [0, 1]** (scale pixels by 1/255 first); other values raise :class:`MPSInputError`.

    Args:
        in_features: number of sites ``d`` (flattened input size).
        num_classes: size ``C`` of the output index.
        bond_dim: bond dimension χ ≥ 1.
        feature_map: ``"affine"`` φ(x) = [1, x] (default, the seed's); ``"trig"``
            φ(x) = [cos(πx/2), sin(πx/2)]; ``"poly"`` φ(x) = [1, x, …, x^degree].
        degree: degree of the ``"poly"`` map.
        normalize: what to do with the scale of the chain (see below). ``"per_sample"``
            (default) returns ``L̂^T O_c R̂`` with ``L̂ = L/‖L‖, R̂ = R/‖R‖``, i.e.
            ``f_c(x) / (‖L(x)‖ ‖R(x)‖)``; ``"none"`` returns the exact ``f_c(x)``.
        contraction: ``"vector"`` (boundary vector times per-sample site matrices),
            ``"fused"`` (boundary vector, φ contracted on the fly: less memory), ``"tree"``
            (balanced tree of batched matrix products) or ``"auto"`` (the measured rule of
            :func:`kdlab.models.mps_contract.choose_strategy`: tree for χ ≤ 2, vector for
            χ ≤ 16, fused above). Results agree up to rounding.
        group: merge this many adjacent sites before contracting (a power of two; ``None``: the
            rule). Results do not depend on it up to rounding.
        output_site: ``m``, the number of sites left of the output core (default ``d // 2``).
        init_std: size of the random part of the initial chain (see Initialisation).
        output_std: standard deviation of the initial output core ``O``.
        check_inputs: validate the [0, 1] range on every call (one min/max reduction).
        dtype: parameter dtype (default: torch's default dtype).

    Scale and temperature. A product of 784 matrices over- or underflows unless it is
    rescaled, so the contraction carries ``log ‖L(x)‖ + log ‖R(x)‖`` per sample
    (:meth:`forward_log`). That positive per-sample factor multiplies all classes alike: it never
    changes the argmax, only how peaked the softmax is — it acts as a per-sample inverse
    temperature ``exp(s(x))``. ``"per_sample"`` drops it, so ``|logit_c| ≤ ‖O_c‖₂`` and the
    logit scale is set by the learnable output core instead of by the norm of the chain; this
    is the default because distillation divides logits by a temperature T and matches them to
    the teacher's, which only makes sense if the student's logit scale is a trainable quantity
    rather than ``exp`` of a sum of 784 log-norms (which over/underflows float32 beyond ±88).
    ``"none"`` restores the exact ``f(x)`` (multilinear, what :meth:`from_linear` reproduces)
    and may overflow on long chains.

    Parametrisation and initialisation. ``A_i = E + δ_i / √d`` where ``E[:, j, :] = w_j I`` is a
    fixed buffer, ``w`` from :func:`~kdlab.models.mps_contract.identity_weights` (``[1, 0]`` for
    affine: ``M(x) = I + ε`` for every x in [0, 1]; ``[1, 1]`` for trig: ``(cos + sin)·I + ε``),
    and the parameter ``delta`` starts i.i.d. ``N(0, init_std²/χ)``; so the chain starts near the
    identity at any length. The ``1/√d`` factor shrinks the change of the whole chain per
    optimiser step (all d sites move at once) from ``O(d·lr)`` to ``O(√d·lr)``: usual Adam
    learning rates work (sklearn digits upsampled to 784 sites, χ = 10, Adam, 6 epochs: lr 1e-2
    → 94 %, 3e-3 → 93 %, 1e-3 → 85 % test accuracy; without the factor only lr ≤ 3e-4 trained).
    Weight decay on ``delta`` pulls the chain towards the identity. ``O ~ N(0, output_std²)``:
    per-sample logits are bounded by ``‖O_c‖₂`` (about ``2√χ·output_std``), so this sets the
    reachable logit range at the start.
    """

    def __init__(
        self,
        in_features: int,
        num_classes: int,
        bond_dim: int = 10,
        feature_map: str = "affine",
        *,
        degree: int = 2,
        normalize: str = "per_sample",
        contraction: str = "auto",
        group: int | None = None,
        output_site: int | None = None,
        init_std: float = 0.5,
        output_std: float = 1.0,
        check_inputs: bool = True,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        _check_int("in_features", in_features, 1)
        _check_int("num_classes", num_classes, 1)
        _check_int("bond_dim", bond_dim, 1)
        _check_choice("feature_map", feature_map, FEATURE_MAPS)
        _check_choice("normalize", normalize, NORMALIZE)
        _check_choice("contraction", contraction, STRATEGIES)
        if feature_map == "poly":
            _check_int("degree", degree, 1)
        if group is not None and (group < 1 or group & (group - 1)):
            raise ConfigError(f"group must be None or a power of two >= 1, got {group!r}")
        m = in_features // 2 if output_site is None else output_site
        if not 0 <= m <= in_features:
            raise ConfigError(f"output_site must be in [0, {in_features}], got {output_site!r}")
        self.in_features, self.num_classes, self.bond_dim = in_features, num_classes, bond_dim
        self.feature_map, self.degree, self.normalize = feature_map, degree, normalize
        self.contraction, self.group, self.output_site = contraction, group, m
        self.check_inputs = check_inputs
        dtype = dtype or torch.get_default_dtype()
        p = feature_dim(feature_map, degree)
        w = torch.tensor(identity_weights(feature_map, degree), dtype=dtype)
        eye = torch.eye(bond_dim, dtype=dtype)
        base = eye[:, None, :] * w[None, :, None]
        self.core_scale = 1.0 / math.sqrt(in_features)
        noise = torch.randn(in_features, bond_dim, p, bond_dim, dtype=dtype)
        self.delta = nn.Parameter(noise * (init_std / math.sqrt(bond_dim)))
        self.register_buffer("base", base)
        out = torch.randn(bond_dim, num_classes, bond_dim, dtype=dtype) * output_std
        self.output = nn.Parameter(out)
        self.register_buffer("boundary", eye[0].clone())

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, num_classes={self.num_classes}, "
            f"bond_dim={self.bond_dim}, feature_map={self.feature_map!r}, "
            f"normalize={self.normalize!r}, contraction={self.contraction!r}"
        )

    @property
    def cores(self) -> Tensor:
        """The site cores ``A = E + δ/√d``, shape ``[d, χ, p, χ]`` (site order, left to right)."""
        return self.base + self.core_scale * self.delta

    def _flatten(self, x: Tensor) -> Tensor:
        if x.dim() < 1:
            raise MPSInputError("MPS expects inputs of shape [batch, ...], got a scalar")
        flat = x.reshape(x.shape[0], -1)
        if flat.shape[1] != self.in_features:
            raise MPSInputError(
                f"MPS expects {self.in_features} input features per sample, got "
                f"{flat.shape[1]} (input shape {tuple(x.shape)}); check in_features or reshape"
            )
        if self.check_inputs and flat.numel():
            lo, hi = torch.aminmax(flat.detach())
            lo, hi = float(lo), float(hi)
            if not (lo >= 0.0 and hi <= 1.0):
                raise MPSInputError(
                    f"MPS inputs must lie in [0, 1], got min={lo:.4g}, max={hi:.4g}; scale "
                    "your inputs first, e.g. pixels / 255 or (x - x_min) / (x_max - x_min)"
                )
        return flat.to(self.cores.dtype)

    def forward_log(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Return ``(L̂^T O_c R̂ [B, C], s [B])`` with ``s = log‖L(x)‖ + log‖R(x)‖``.

        The exact output is ``f_c(x) = exp(s) · L̂^T O_c R̂``.
        """
        flat = self._flatten(x)
        d, m = self.in_features, self.output_site
        n = max(m, d - m, 1)
        feats = embed(flat, self.feature_map, self.degree)  # [B, d, p]
        left_c, left_f = pad_sites(self.cores[:m][None], feats[:, :m][None], n)
        right_cores = self.cores[m:].flip(0).transpose(1, 3)
        right_c, right_f = pad_sites(right_cores[None], feats[:, m:].flip(1)[None], n)
        cores = torch.cat((left_c, right_c))
        feats2 = torch.cat((left_f, right_f))
        start = self.boundary.expand(2, -1)
        vec, log_norm = contract(cores, feats2, start, self.contraction, self.group)
        chi, c = self.bond_dim, self.num_classes
        left = vec[0] @ self.output.reshape(chi, c * chi)  # [B, C·χ]
        g = torch.bmm(left.view(-1, c, chi), vec[1].unsqueeze(-1)).squeeze(-1)
        return g, log_norm.sum(0)

    def forward(self, x: Tensor) -> Tensor:
        """Logits ``[B, C]``: ``L̂^T O_c R̂`` (``normalize="per_sample"``) or ``f_c(x)``."""
        g, log_scale = self.forward_log(x)
        if self.normalize == "none":
            return g * torch.exp(log_scale).unsqueeze(-1)
        return g

    @classmethod
    def from_linear(
        cls,
        weight: Tensor,
        bias: Tensor | None = None,
        bond_dim: int | None = None,
        *,
        noise: float = 1e-4,
        normalize: str = "none",
        **kwargs: object,
    ) -> MPS:
        """An affine-map MPS with ``f(x) = W x + b`` exactly (Novikov et al. 2016 init).

        ``W x + b`` is a sum of single-site terms. The left boundary state carries
        ``[1, Σ_{i<m} W_{1i} x_i, …, Σ_{i<m} W_{Ci} x_i]`` (likewise on the right), built by
        ``A_i[:, 0, :] = I`` and ``A_i[0, 1, c+1] = W_{ci}`` (left half) or
        ``A_i[c+1, 1, 0] = W_{ci}`` (right half); the output core adds the two partial sums and
        ``b_c``. This needs bond dimension ``C + 1`` (2 for one class; a shared chain cannot do
        with less in general, since the middle cut of Θ has rank ``1 + rank W_left``). Beyond
        ``C + 1`` the extra bond space is identity on ``A[:, 0, :]`` plus ``N(0, noise²)`` on every
        entry outside the exact block, so the output is exact up to ``O(noise²)``.
        ``normalize`` defaults to ``"none"`` so that the model *is* the linear classifier.
        """
        if kwargs.get("feature_map", "affine") != "affine":
            raise ConfigError("from_linear needs feature_map='affine' (φ(x) = [1, x])")
        if weight.dim() != 2:
            raise ConfigError(
                f"weight must be [num_classes, in_features], got {tuple(weight.shape)}"
            )
        c, d = weight.shape
        need = c + 1
        bond_dim = need if bond_dim is None else bond_dim
        if bond_dim < need:
            raise ConfigError(
                f"from_linear with {c} classes needs bond_dim >= {need} to be exact, got {bond_dim}"
            )
        kwargs.pop("feature_map", None)
        model = cls(d, c, bond_dim, "affine", normalize=normalize, **kwargs)  # type: ignore[arg-type]
        m, dt = model.output_site, model.cores.dtype
        w = weight.detach().to(dt)
        b = torch.zeros(c, dtype=dt) if bias is None else bias.detach().to(dt)
        with torch.no_grad():
            cores = torch.randn_like(model.delta) * noise
            out = torch.randn_like(model.output) * noise
            cores[:, :need, :, :need] = 0.0
            out[:need, :, :need] = 0.0
            cores[:, :, 0, :] += torch.eye(bond_dim, dtype=dt)
            idx = torch.arange(1, need)
            cores[:m, 0, 1, idx] = w[:, :m].T
            cores[m:, idx, 1, 0] = w[:, m:].T
            out[0, :, 0] = b
            out[idx, torch.arange(c), 0] = 1.0
            out[0, torch.arange(c), idx] = 1.0
            model.delta.copy_((cores - model.base) / model.core_scale)
            model.output.copy_(out)
        return model


class StackedMPS(nn.Module):
    """Two MPS layers (seed eq. 13): ``logits = MPS₂(link(MPS₁(x)))``.

    ``MPS₁`` is one MPS with a ``hidden``-sized output index: each hidden unit ``h_k(x)`` is a
    multilinear function of x (affine map), all sharing one chain, so the first layer costs one
    contraction plus a ``[B, χ] @ [χ, hidden·χ]`` product — ``hidden`` separate small MPS would
    cost ``hidden`` contractions. ``MPS₂`` treats the ``hidden`` values as its sites, so the
    composition contains products ``h_k h_l ⋯`` and reaches degree > 1 in each x_i (with z
    hidden units equal to x_i — the seed's "z copies" — any polynomial of degree ≤ z in each x_i).

    Between the layers, ``link`` maps ``h`` to the range the second feature map expects:
    ``"sigmoid"`` (default) ``z = σ(h) ∈ (0, 1)`` whatever the scale of ``h`` (near ``0.5 + h/4``
    for the small ``h`` of a fresh model); ``"linear"`` ``z = h`` keeps the composition an exact
    polynomial (eq. 13 verbatim) but does not bound ``z`` (the second layer skips its [0, 1]
    check) — use it with ``normalize="none"`` on short chains. ``hidden_bond_dim`` (default
    ``bond_dim``) is the first layer's bond dimension; the other keyword arguments are those of
    :class:`MPS` and apply to both layers.
    """

    def __init__(
        self,
        in_features: int,
        num_classes: int,
        hidden: int = 64,
        bond_dim: int = 10,
        hidden_bond_dim: int | None = None,
        feature_map: str = "affine",
        *,
        link: str = "sigmoid",
        normalize: str = "per_sample",
        degree: int = 2,
        contraction: str = "auto",
        init_std: float = 0.5,
        output_std: float = 1.0,
        check_inputs: bool = True,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        _check_int("hidden", hidden, 1)
        _check_choice("link", link, LINKS)
        self.link = link
        common = dict(
            degree=degree,
            normalize=normalize,
            contraction=contraction,
            init_std=init_std,
            output_std=output_std,
            dtype=dtype,
        )
        first_bond = bond_dim if hidden_bond_dim is None else hidden_bond_dim
        self.layer1 = MPS(
            in_features, hidden, first_bond, feature_map, check_inputs=check_inputs, **common
        )  # type: ignore[arg-type]
        self.layer2 = MPS(hidden, num_classes, bond_dim, feature_map, check_inputs=False, **common)  # type: ignore[arg-type]

    def hidden_features(self, x: Tensor) -> Tensor:
        """``link(MPS₁(x))``, the second layer's inputs ``[B, hidden]``."""
        h = self.layer1(x)
        return torch.sigmoid(h) if self.link == "sigmoid" else h

    def forward(self, x: Tensor) -> Tensor:
        return self.layer2(self.hidden_features(x))
