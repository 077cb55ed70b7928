"""Self-supervised knowledge distillation using singular value decomposition (Lee, Kim & Song,
ECCV 2018; "KD-SVD").

Each tapped map A [C, H, W] is read as a matrix X [H·W, C]; its truncated SVD keeps the top-k
right singular vectors v_1..v_k ∈ R^C (what the channels do together; U, the spatial part, is
dropped) and singular values σ_1..σ_k. Post-processing, as in the authors' code:

1. the student's top k + 1 vectors are candidates; each teacher vector v^T_i takes the candidate
   with the largest |cosine| to it, its sign flipped when the cosine is negative (SVD's sign
   ambiguity: v and −v are equally valid singular vectors);
2. both models' vectors are scaled by the teacher's σ_i / ‖σ_{1..k}‖ (fixed weights).

Between consecutive tapped layers l, l+1 of the same model, a radial basis function relates every
channel entry of one layer's vector to every entry of the next one's:
G_l[c, c', i] = exp(−(v_{l,i}[c] − v_{l+1,i}[c'])² / σ_rbf), σ_rbf = 8. The loss is the squared
L2 distance between the student's and the teacher's G, summed over entries and layer pairs and
averaged over the batch. Defaults follow the authors' code: k = 1, σ_rbf = 8.

The steps and constants above were checked against the authors' TensorFlow code (SSKD_SVD,
``nets/Distillation.py``) and RepDistiller's port; the paper's full text was not at hand.

Paper vs code vs kdlab:
- Scale: the authors' TensorFlow code sums ½·√k·(G_S − G_T)² over the batch too; RepDistiller's
  port divides by the batch size without the ½·√k. kdlab follows RepDistiller (batch mean), so
  a weight does not depend on the batch size.
- Signs: the authors flip the teacher's vectors to agree with the student's; RepDistiller flips
  the student's to the teacher's. Either way one side keeps the solver's arbitrary sign, which
  changes the RBF between layers. kdlab fixes each teacher vector's sign (its largest-magnitude
  entry positive) and aligns the student's to it, so the loss depends on the features only.
- Candidates: the authors' code decomposes k + 1 student vectors, RepDistiller's k + 3; kdlab
  uses k + 1, at most min(C, H·W) (the rank bound). A teacher vector past the teacher's rank
  is zero with σ = 0, hence weight 0, and adds nothing.
- Gradient remedies (SVD's gradient holds 1/(σ_i² − σ_j²), which diverges for equal singular
  values): the gradient flows through the vectors the loss reads only — the teacher's top k,
  the student's k + 1 candidates (the authors' custom gradient keeps the top 5) — and the
  couplings of nearly equal eigenvalues (|σ_i² − σ_j²| ≤ 10⁻³·σ₁²) are set to 0 instead of
  their exploding value — the authors zero the non-finite ones. The vectors come from the
  eigen-decomposition (float64) of the smaller of XᵀX [C × C] and XXᵀ [HW × HW] (same vectors,
  σ² as eigenvalues), much cheaper than an SVD of X; vectors past the rank min(C, H·W) are
  zeros with σ = 0.
- Widths: the authors and RepDistiller need equal channel counts (cosines compare the vectors
  entry by entry). kdlab's ``adapter: auto`` gives a student map with another width a 1×1
  convolution to the teacher's width (trained with the student); ``adapter: none`` requires
  equal widths. Spatial sizes may differ between the models (V lives in channel space).
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from kdlab.errors import ConfigError
from kdlab.losses.base import register_term
from kdlab.losses.fsp import LayerListTerm
from kdlab.types import Batch, ModelOutput

#: Couplings 1/(λ_i − λ_j) of eigenvalue gaps at most this fraction of the largest are dropped.
RELATIVE_GAP = 1e-3


class _TopEigenvectors(torch.autograd.Function):
    """Top-k eigenvectors [B, C, k] and eigenvalues [B, k] (descending) of symmetric [B, C, C].

    The backward pass is the exact derivative of those k eigenpairs, with the couplings of
    (nearly) equal eigenvalues set to 0 (see the module docstring).
    """

    @staticmethod
    def forward(ctx: Any, gram: Tensor, count: int) -> tuple[Tensor, Tensor]:
        values, vectors = torch.linalg.eigh(gram)
        values, vectors = values.flip(-1), vectors.flip(-1)
        ctx.save_for_backward(values, vectors)
        ctx.count = count
        return vectors[..., :count], values[..., :count]

    @staticmethod
    def backward(ctx: Any, grad_vectors: Tensor | None, grad_values: Tensor | None) -> Any:
        values, vectors = ctx.saved_tensors
        top = vectors[..., : ctx.count]
        grad = values.new_zeros(vectors.shape)
        if grad_vectors is not None:
            # gap[j, i] = λ_i − λ_j for every j and the top i; dv_i = Σ_j≠i v_j v_jᵀ dM v_i / gap
            gap = values[..., None, : ctx.count] - values[..., :, None]
            floor = RELATIVE_GAP * values[..., :1, None].abs().clamp_min(1e-300)
            keep = gap.abs() > floor
            inverse = torch.where(keep, 1.0 / torch.where(keep, gap, 1.0), 0.0)
            coupling = inverse * (vectors.transpose(-1, -2) @ grad_vectors)
            grad = grad + vectors @ coupling @ top.transpose(-1, -2)
        if grad_values is not None:  # dλ_i = v_iᵀ dM v_i
            grad = grad + (top * grad_values[..., None, :]) @ top.transpose(-1, -2)
        return (grad + grad.transpose(-1, -2)) / 2, None


def right_singular_vectors(maps: Tensor, count: int) -> tuple[Tensor, Tensor]:
    """Top-``count`` right singular vectors [B, C, count] and singular values [B, count] of maps
    [B, C, H, W] read as matrices X [H·W, C] (signs as the solver returns them).

    Eigen-decomposes the smaller of XᵀX [C × C] and XXᵀ [HW × HW] (then v = Xᵀu/σ). Vectors past
    the rank bound min(C, H·W), or with σ ≤ 10⁻⁶·σ₁, are returned as zeros with σ = 0.
    """
    x = maps.flatten(2)  # [B, C, HW] = Xᵀ
    if x.device.type == "mps":  # Apple GPUs have neither float64 nor eigh
        x = x.cpu()
    x = x.double()
    channels, positions = x.shape[1], x.shape[2]
    if channels <= positions:
        vectors, values = _TopEigenvectors.apply(x @ x.transpose(1, 2), min(count, channels))
        sigma = values.clamp_min(0).sqrt()
    else:  # fewer positions than channels: the HW × HW problem is the cheaper one
        left, values = _TopEigenvectors.apply(x.transpose(1, 2) @ x, min(count, positions))
        sigma = values.clamp_min(0).sqrt()
        vectors = x @ left / torch.where(sigma > 0, sigma, 1.0)[:, None, :]
    kept = sigma > 1e-6 * sigma[:, :1]
    vectors, sigma = vectors * kept[:, None, :], sigma * kept
    missing = count - sigma.shape[1]
    if missing > 0:
        vectors, sigma = F.pad(vectors, (0, missing)), F.pad(sigma, (0, missing))
    like = {"device": maps.device, "dtype": maps.dtype}
    return vectors.to(**like), sigma.to(**like)


def canonical_signs(vectors: Tensor) -> Tensor:
    """Each column of [B, C, k] multiplied by ±1 so that its largest-magnitude entry is ≥ 0."""
    largest = vectors.gather(1, vectors.abs().argmax(1, keepdim=True))
    return vectors * torch.where(largest < 0, -1.0, 1.0).to(vectors.dtype)


def align_to_teacher(student: Tensor, teacher: Tensor) -> Tensor:
    """[B, C, k]: for each teacher vector the student candidate ([B, C, m]) with the largest
    |cosine| to it, sign-flipped where that cosine is negative."""
    cosine = student.transpose(1, 2) @ teacher  # [B, m, k]
    best = cosine.abs().argmax(1, keepdim=True)  # [B, 1, k]
    chosen = student.gather(2, best.expand(-1, student.shape[1], -1))
    sign = torch.where(cosine.gather(1, best) < 0, -1.0, 1.0).to(student.dtype)
    return chosen * sign


def layer_rbf(front: Tensor, back: Tensor, sigma: float) -> Tensor:
    """G [B, C₁, C₂, k] = exp(−(front[c, i] − back[c', i])² / σ) for vectors [B, C, k]."""
    return torch.exp(-(front[:, :, None, :] - back[:, None, :, :]).pow(2) / sigma)


def _descriptors(
    student: Tensor, teacher: Tensor, k: int
) -> tuple[Tensor, Tensor]:  # one layer, both models
    v_t, sigma_t = right_singular_vectors(teacher.detach(), k)
    v_t = canonical_signs(v_t)
    # past the rank bound min(C, H·W) a vector is zero (σ = 0): never a candidate
    candidates = min(k + 1, student.shape[1], student.shape[2] * student.shape[3])
    v_s = align_to_teacher(right_singular_vectors(student, candidates)[0], v_t)
    weights = F.normalize(sigma_t, dim=1, eps=1e-12)[:, None, :]
    return v_s * weights, v_t * weights


def kdsvd_loss(
    student_maps: Sequence[Tensor],
    teacher_maps: Sequence[Tensor],
    *,
    k: int = 1,
    sigma: float = 8.0,
) -> Tensor:
    """Σ over consecutive layer pairs of mean_b Σ_{c,c',i} (G_S − G_T)², G the RBF between the
    (aligned, σ-weighted) top-k right singular vectors of two consecutive maps of one model.

    Maps are [B, C, H, W]; the student's and teacher's maps at one position must have the same
    number of channels C (≥ k); teacher maps are treated as constants.
    """
    if len(student_maps) != len(teacher_maps) or len(student_maps) < 2:
        raise ValueError(
            f"kdsvd_loss needs as many student as teacher maps, at least 2, got "
            f"{len(student_maps)} and {len(teacher_maps)}"
        )
    pairs = list(zip(student_maps, teacher_maps, strict=True))
    for s, t in pairs:
        if s.shape[:2] != t.shape[:2] or t.shape[1] < k:
            raise ValueError(
                f"kdsvd_loss needs maps of equal batch and width ≥ k = {k} at each position, got "
                f"student {tuple(s.shape)} and teacher {tuple(t.shape)}"
            )
    described = [_descriptors(s, t, k) for s, t in pairs]
    total = student_maps[0].new_zeros(())
    for (s_front, t_front), (s_back, t_back) in itertools.pairwise(described):
        diff = layer_rbf(s_front, s_back, sigma) - layer_rbf(t_front, t_back, sigma)
        total = total + diff.pow(2).flatten(1).sum(1).mean()
    return total


def _layer_list(value: Any, role: str) -> list[str]:
    if (
        isinstance(value, Sequence)
        and not isinstance(value, str)
        and len(value) >= 2
        and all(isinstance(p, str) and p for p in value)
    ):
        return list(value)
    raise ConfigError(
        f"loss 'kdsvd' needs the {role}'s layers as a list of at least 2 module paths, in "
        "forward order (consecutive ones are related), e.g. {type: kdsvd, student: [features.0, "
        f"features.1, features.2], teacher: [features.0, features.1, features.2]}}; got {value!r}"
    )


@register_term
class KDSVD(LayerListTerm):
    """Σ_l mean_b ‖G_S,l − G_T,l‖², G the RBF between consecutive layers' singular vectors."""

    kind = "kdsvd"

    def __init__(
        self,
        student: Any = None,
        teacher: Any = None,
        weight: float = 1.0,
        k: int = 1,
        sigma: float = 8.0,
        adapter: str = "auto",
        adapter_bn: bool = False,
        name: str | None = None,
    ) -> None:
        s_layers, t_layers = _layer_list(student, "student"), _layer_list(teacher, "teacher")
        if len(s_layers) != len(t_layers):
            raise ConfigError(
                f"loss 'kdsvd' compares layer i of the student with layer i of the teacher, but "
                f"got {len(s_layers)} student and {len(t_layers)} teacher layers; list as many"
            )
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ConfigError(f"k must be a whole number ≥ 1 (the paper uses 1), got {k!r}")
        if not sigma > 0:
            raise ConfigError(f"sigma must be a number > 0 (the paper uses 8), got {sigma!r}")
        super().__init__(s_layers, t_layers, weight, adapter, adapter_bn, name)
        self.k, self.sigma = k, float(sigma)

    def forward(self, student: ModelOutput, teacher: ModelOutput | None, batch: Batch) -> Tensor:
        s, t = self.features(student, teacher)
        widths = zip(self.teacher_layers, (m.shape[1] for m in t), strict=True)
        narrow = [(path, c) for path, c in widths if c < self.k]
        if narrow:
            raise ConfigError(
                f"{self._where()}k = {self.k} singular vectors need maps with at least k "
                f"channels, but {narrow} (teacher module, channels) have fewer; lower k"
            )
        return kdsvd_loss(s, t, k=self.k, sigma=self.sigma)


__all__ = [
    "KDSVD",
    "align_to_teacher",
    "canonical_signs",
    "kdsvd_loss",
    "layer_rbf",
    "right_singular_vectors",
]
