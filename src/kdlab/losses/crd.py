"""Contrastive representation distillation, CRD (Tian, Krishnan & Isola, ICLR 2020).

Each model's tapped vector (flattened per sample) goes through its own trainable embedding head
g(x) = normalise(W·x + b) ∈ ℝ^d (d = 128); the teacher network stays frozen, its head trains with
the student. Two memory banks keep one embedding per training example: m^S (student side) and
m^T (teacher side). For example i of a batch, with embeddings s_i and t_i and N negatives
j_1..j_N drawn from the M training examples, the candidates are k ∈ {i, j_1, …, j_N} and

    student-anchored scores  e^{s_i·m^T_k / τ},     teacher-anchored scores  e^{t_i·m^S_k / τ}.

NCE objective (paper eq. 18; the authors' ContrastLoss), per anchor, with P = e^{v·m/τ} / Z and
h = P / (P + N/M) — the posterior that a pair came from the data rather than from the uniform
noise distribution P_n = 1/M drawn N times:

    L = −(1/B) Σ_i [ log h(positive_i) + Σ_n log(1 − h(negative_i,n)) ],

and the term is L(student-anchored) + L(teacher-anchored). The paper writes h with the raw
e^{v·m/τ}; the authors' code divides it by a constant Z, estimated once per anchor on the first
training batch as Z = M · mean of e^{v·m/τ} over that batch's B·(N+1) scores. kdlab follows the
code (as every published number does) and keeps log Z in a buffer, so checkpoints keep it.
``objective: softmax`` replaces NCE with InfoNCE, −(1/B) Σ_i log softmax over the N + 1
candidates' v·m/τ at the positive (no Z); it is an option, not the paper's loss.

Memory banks are initialised as in the authors' code: uniform in [−a, a], a = 1/√(d/3), so each
coordinate has variance 1/d and a row's expected squared norm is 1 (rows are not normalised until
first written). After each training step's scores, at the batch's sample indices ``batch.index``
(positions in the training split): m_i ← normalise(μ·m_i + (1 − μ)·v_i), μ = 0.5, under no_grad.
A term in eval mode only reads: banks, Z and the draw counter stay unchanged.

Negatives: the authors' memory module draws N + 1 indices uniformly with replacement over all M
examples and overwrites the first with the positive, so a negative may be the positive itself;
their CIFAR-100 loader (mode 'exact', used for the paper's tables) instead supplies N indices
drawn without replacement from the examples of *other classes*. kdlab draws uniformly with
replacement from the M − 1 other examples (never the positive), needing no labels. The draws come
from a torch.Generator re-seeded every step from (seed, steps drawn): the seed is taken from
torch's global RNG in ``prepare`` and both numbers are saved in ``state_dict()`` (as the module's
extra state), so draws are reproducible under torch.manual_seed and a resumed run continues them.

log h is computed with softplus instead of the code's log(P / (P + N/M + 1e-7)); the values agree
to ≈1e-7 relative. RepDistiller's CIFAR-100 recipe: CE 1.0 + CRD 0.8 (``-r 1 -a 0 -b 0.8``),
d = 128, N = 16384, τ = 0.07, μ = 0.5, on the penultimate (pooled) features of both networks.
The banks cost 2·M·d floats (Fashion-MNIST: 54k × 128 → 55 MB), in checkpoints too.

DDP: each rank sees a shard of the global batch. The bank updates (indices and embeddings) are
all-gathered, so every rank writes every row and the banks stay identical across ranks; the first
batch's Z is averaged over the ranks (equal shards: the global batch's Z). Every rank must call
the term equally often, which kdlab's loop does.
"""

from __future__ import annotations

import math

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from kdlab.errors import ConfigError, quote
from kdlab.losses.base import register_term
from kdlab.losses.feature import FeatureTerm, flat
from kdlab.types import Batch, ModelOutput

OBJECTIVES = ("nce", "softmax")
_MASK_63 = (1 << 63) - 1


def crd_nce_loss(
    positive_scores: Tensor, negative_scores: Tensor, noise_probability: float
) -> Tensor:
    """CRD's NCE loss −mean_i [log h(P_i+) + Σ_n log(1 − h(P_i,n))], h(P) = P / (P + N·P_n).

    ``positive_scores`` [B] and ``negative_scores`` [B, N] are the (Z-normalised) scores
    P = e^{v·m/τ} / Z > 0; ``noise_probability`` P_n is 1 / (training-set size).
    """
    if positive_scores.dim() != 1 or negative_scores.dim() != 2:
        raise ConfigError(
            "crd_nce_loss takes positive_scores [batch] and negative_scores [batch, negatives], "
            f"got {tuple(positive_scores.shape)} and {tuple(negative_scores.shape)}"
        )
    if not 0 < noise_probability <= 1:
        raise ConfigError(
            f"noise_probability must be in (0, 1] (1 / training-set size), got {noise_probability}"
        )
    log_noise = math.log(negative_scores.shape[1] * noise_probability)
    return nce_from_log_scores(positive_scores.log(), negative_scores.log(), log_noise)


def nce_from_log_scores(log_positive: Tensor, log_negative: Tensor, log_noise: float) -> Tensor:
    """:func:`crd_nce_loss` from log P and log(N·P_n), in a form that cannot overflow:
    −log h = softplus(log(N·P_n) − log P) and −log(1 − h) = softplus(log P − log(N·P_n))."""
    positive = F.softplus(log_noise - log_positive)
    negative = F.softplus(log_negative - log_noise).sum(1)
    return (positive + negative).mean()


def crd_softmax_loss(positive_logits: Tensor, negative_logits: Tensor) -> Tensor:
    """InfoNCE: −mean_i log softmax([l_i+, l_i,1..N])_0, logits l = v·m/τ ([B] and [B, N])."""
    logits = torch.cat([positive_logits.unsqueeze(1), negative_logits], 1)
    return -torch.log_softmax(logits, 1)[:, 0].mean()


def contrast_logits(
    anchors: Tensor, bank: Tensor, candidates: Tensor, temperature: float
) -> Tensor:
    """v_i·m_k/τ for anchors [B, d] and bank rows ``candidates`` [B, K] → [B, K]."""
    rows = bank.index_select(0, candidates.reshape(-1)).view(*candidates.shape, -1)
    return torch.bmm(rows, anchors.to(rows.dtype).unsqueeze(2)).squeeze(2) / temperature


@torch.no_grad()
def momentum_update(bank: Tensor, index: Tensor, embeddings: Tensor, momentum: float) -> None:
    """In place: bank[index] ← normalise(momentum·bank[index] + (1 − momentum)·embeddings)."""
    rows = bank.index_select(0, index) * momentum + embeddings.to(bank.dtype) * (1 - momentum)
    bank.index_copy_(0, index, F.normalize(rows, dim=1))


def draw_negatives(
    positives: Tensor, count: int, population: int, generator: torch.Generator | None = None
) -> Tensor:
    """[B, count] indices uniform over range(population) without each row's positive."""
    shape = (len(positives), count)
    draw = torch.randint(0, population - 1, shape, generator=generator, device=positives.device)
    return draw + (draw >= positives.unsqueeze(1)).long()  # skip the positive: shift past it


def random_bank(size: int, dim: int) -> Tensor:
    """The authors' initial bank: uniform in [−a, a], a = 1/√(dim/3) (rows of norm ≈ 1)."""
    bound = 1.0 / math.sqrt(dim / 3)
    return torch.rand(size, dim) * (2 * bound) - bound


def _all_ranks(x: Tensor) -> Tensor:
    """``x`` of every rank, concatenated in rank order (``x`` itself in one process)."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() < 2:
        return x
    parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, x.contiguous())
    return torch.cat(parts)


def _mean_over_ranks(x: Tensor) -> Tensor:
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() < 2:
        return x
    total = x.clone()
    dist.all_reduce(total)
    return total / dist.get_world_size()


@register_term
class CRD(FeatureTerm):
    """L_NCE(student-anchored) + L_NCE(teacher-anchored) over memory banks of embeddings."""

    kind = "crd"
    match = "batch"

    def __init__(
        self,
        student: str | None = None,
        teacher: str | None = None,
        weight: float = 1.0,
        embedding_dim: int = 128,
        negatives: int = 16384,
        temperature: float = 0.07,
        momentum: float = 0.5,
        objective: str = "nce",
        train_size: int | None = None,
        name: str | None = None,
    ) -> None:
        super().__init__(student, teacher, weight, "none", False, name)
        for key, value in (("embedding_dim", embedding_dim), ("negatives", negatives)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"{key} must be a positive integer, got {quote(value)}")
        if train_size is not None and (not isinstance(train_size, int) or train_size < 2):
            raise ConfigError(
                f"train_size must be the number of training examples (≥ 2), got {quote(train_size)}"
            )
        if not temperature > 0:
            raise ConfigError(f"temperature must be > 0 (the paper's is 0.07), got {temperature}")
        if not 0 <= momentum < 1:
            raise ConfigError(f"momentum must be in [0, 1) (the paper's is 0.5), got {momentum}")
        if objective not in OBJECTIVES:
            raise ConfigError(
                f"objective must be one of {', '.join(OBJECTIVES)} (nce: the paper's), "
                f"got {quote(objective)}"
            )
        self.embedding_dim, self.negatives = embedding_dim, negatives
        self.temperature, self.momentum = float(temperature), float(momentum)
        self.objective, self.train_size = objective, train_size
        self.student_head: nn.Linear | None = None
        self.teacher_head: nn.Linear | None = None
        for buffer in ("student_bank", "teacher_bank", "log_z"):
            self.register_buffer(buffer, None)
        self._seed, self._draws = 0, 0
        self._generator: torch.Generator | None = None

    # -- building --------------------------------------------------------------------------------

    def prepare(
        self, student: ModelOutput, teacher: ModelOutput | None, sample: Batch | None = None
    ) -> None:
        """Build both heads and both memory banks (call before building optimizers)."""
        s = flat(self._read(student, self.student_path, "student"))
        t = flat(self._read(self._teacher(teacher), self.teacher_path, "teacher"))
        size = self._bank_size(sample)
        self.check_run(size, 0)
        where = {"device": s.device, "dtype": s.dtype}
        self.student_head = nn.Linear(s.shape[1], self.embedding_dim).to(**where)
        self.teacher_head = nn.Linear(t.shape[1], self.embedding_dim).to(**where)
        self.student_bank = random_bank(size, self.embedding_dim).to(**where)
        self.teacher_bank = random_bank(size, self.embedding_dim).to(**where)
        self.log_z = torch.full((2,), math.nan, **where)  # NaN: not estimated yet
        self._seed = int(torch.randint(0, _MASK_63, (1,)))
        self._draws = 0

    def check_run(self, train_size: int, epochs: int) -> None:
        """The negatives must be drawn from fewer examples than the split has (preflight too)."""
        if self.negatives >= train_size:
            raise ConfigError(
                f"{self._where()}negatives is {self.negatives}, but the training split has only "
                f"{train_size} examples; use negatives below {train_size} (e.g. "
                f"{_fitting(train_size)})"
            )

    def _bank_size(self, sample: Batch | None) -> int:
        known = sample.train_size if sample is not None else 0
        if self.train_size is None:
            if not known:
                raise ConfigError(
                    f"{self._where()}the training-set size is unknown (the sample batch has "
                    "train_size 0, e.g. outside kdlab's loop); pass train_size: <number of "
                    "training examples>, which sizes the memory banks"
                )
            return known
        if known and known != self.train_size:
            raise ConfigError(
                f"{self._where()}train_size is {self.train_size}, but the training split has "
                f"{known} examples; drop train_size (kdlab sets it) or write {known}"
            )
        return self.train_size

    def get_extra_state(self) -> Tensor:
        """The negatives' (seed, steps drawn), so a resumed run draws what it would have."""
        return torch.tensor([self._seed, self._draws], dtype=torch.int64)

    def set_extra_state(self, state: Tensor) -> None:
        self._seed, self._draws = (int(v) for v in state.tolist())

    # -- the loss --------------------------------------------------------------------------------

    def forward(self, student: ModelOutput, teacher: ModelOutput | None, batch: Batch) -> Tensor:
        s_vec, t_vec = self._vectors(student, teacher)
        index = self._index(batch, len(s_vec))
        assert self.student_head is not None and self.teacher_head is not None  # by _vectors
        with torch.autocast(s_vec.device.type, enabled=False):  # e^{x/0.07} needs full precision
            s_emb = F.normalize(self.student_head(s_vec), dim=1)
            t_emb = F.normalize(self.teacher_head(t_vec), dim=1)
            candidates = torch.cat([index.unsqueeze(1), self._draw(index)], 1)
            s_logits = contrast_logits(s_emb, self.teacher_bank, candidates, self.temperature)
            t_logits = contrast_logits(t_emb, self.student_bank, candidates, self.temperature)
            loss = self._loss(s_logits, t_logits)
        if self.training:
            index, s_all, t_all = (_all_ranks(x.detach()) for x in (index, s_emb, t_emb))
            momentum_update(self.student_bank, index, s_all, self.momentum)
            momentum_update(self.teacher_bank, index, t_all, self.momentum)
        return loss

    def _loss(self, s_logits: Tensor, t_logits: Tensor) -> Tensor:
        """Both anchors' losses from the [B, 1 + N] logits v·m/τ (positive first)."""
        if self.objective == "softmax":
            return crd_softmax_loss(s_logits[:, 0], s_logits[:, 1:]) + crd_softmax_loss(
                t_logits[:, 0], t_logits[:, 1:]
            )
        log_z = self._log_normaliser(s_logits, t_logits)
        size = self.student_bank.shape[0]  # type: ignore[union-attr]
        log_noise = math.log(self.negatives / size)
        s_log_p, t_log_p = s_logits - log_z[0], t_logits - log_z[1]
        return nce_from_log_scores(s_log_p[:, 0], s_log_p[:, 1:], log_noise) + nce_from_log_scores(
            t_log_p[:, 0], t_log_p[:, 1:], log_noise
        )

    @torch.no_grad()
    def _log_normaliser(self, s_logits: Tensor, t_logits: Tensor) -> Tensor:
        """log Z per anchor: stored, or estimated now (first batch) as log(M · mean e^{v·m/τ}).

        Chosen on the device with ``where`` (no host sync); stored only in training mode.
        """
        assert self.log_z is not None and self.student_bank is not None
        mean = torch.stack([torch.logsumexp(x.flatten(), 0) - math.log(x.numel()) for x in
                            (s_logits, t_logits)]).exp()  # fmt: skip
        estimate = torch.log(_mean_over_ranks(mean) * self.student_bank.shape[0])
        log_z = torch.where(torch.isnan(self.log_z), estimate.to(self.log_z.dtype), self.log_z)
        if self.training:
            self.log_z.copy_(log_z)
        return log_z

    def _draw(self, index: Tensor) -> Tensor:
        """This step's negatives [B, N]; a training step advances the draw counter."""
        if self._generator is None or self._generator.device != index.device:
            self._generator = torch.Generator(device=index.device)
        mixed = (self._seed + self._draws * 0x9E3779B97F4A7C15) & _MASK_63
        self._generator.manual_seed(mixed)
        if self.training:
            self._draws += 1
        size = self.student_bank.shape[0]  # type: ignore[union-attr]
        return draw_negatives(index, self.negatives, size, self._generator)

    # -- reading the batch -----------------------------------------------------------------------

    def _vectors(self, student: ModelOutput, teacher: ModelOutput | None) -> tuple[Tensor, Tensor]:
        """(student vectors, detached teacher vectors), flattened per sample, checked."""
        s = flat(self._read(student, self.student_path, "student"))
        t = flat(self._read(self._teacher(teacher), self.teacher_path, "teacher")).detach()
        if self.student_head is None or self.teacher_head is None or self.student_bank is None:
            raise ConfigError(
                f"{self._where()}the embedding heads and memory banks must exist before the "
                "optimizer is built: call kdlab.losses.feature.prepare_terms (kdlab's schemes do "
                "it in prepare()) or term.prepare(student_out, teacher_out, sample)"
            )
        if len(s) != len(t):
            raise ConfigError(
                f"{self._where()}student batch {len(s)} and teacher batch {len(t)} differ; both "
                "models must see the same inputs"
            )
        built = (self.student_head.in_features, self.teacher_head.in_features)
        if (s.shape[1], t.shape[1]) != built:
            raise ConfigError(
                f"{self._where()}the heads were built for {built[0]}-d student and {built[1]}-d "
                f"teacher vectors, but this batch has {s.shape[1]} and {t.shape[1]}; inputs of "
                "one run must all have the same size"
            )
        dtype = self.student_head.weight.dtype
        return s.to(dtype), t.to(dtype)

    def _index(self, batch: Batch, size: int) -> Tensor:
        """The batch's positions in the training split, on the banks' device, checked."""
        bank = self.student_bank
        assert bank is not None
        if batch.index is None:
            raise ConfigError(
                f"{self._where()}CRD needs each batch's sample indices (Batch.index: positions in "
                "the training split) to address its memory banks, but this batch has none; use "
                "kdlab's data loaders, or pass index=<positions> when building Batch"
            )
        index = batch.index.to(bank.device, torch.long).reshape(-1)
        if len(index) != size:
            raise ConfigError(
                f"{self._where()}Batch.index holds {len(index)} positions for {size} samples; "
                "give one training-split position per sample"
            )
        if index.device.type != "cuda":  # on CUDA an out-of-range gather stops with an assert
            low, high = int(index.min()), int(index.max())
            if low < 0 or high >= len(bank):
                raise ConfigError(
                    f"{self._where()}Batch.index holds positions {low}..{high}, but the memory "
                    f"banks hold {len(bank)} training examples; index rows of the training split "
                    "(and give train_size its full size)"
                )
        return index

    def extra_repr(self) -> str:
        size = None if self.student_bank is None else len(self.student_bank)
        return (
            f"name={self.name!r}, weight={self.weight}, student={self.student_path!r}, "
            f"teacher={self.teacher_path!r}, embedding_dim={self.embedding_dim}, "
            f"negatives={self.negatives}, temperature={self.temperature}, "
            f"momentum={self.momentum}, objective={self.objective}, bank_size={size}"
        )


def _fitting(size: int) -> int:
    """A round number of negatives below ``size`` (a power of two, at least 1)."""
    return 1 << max(0, (size - 1).bit_length() - 1)


__all__ = [
    "CRD",
    "contrast_logits",
    "crd_nce_loss",
    "crd_softmax_loss",
    "draw_negatives",
    "momentum_update",
    "nce_from_log_scores",
    "random_bank",
]
