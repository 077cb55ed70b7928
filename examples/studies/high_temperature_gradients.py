"""Seed 002's limit, measured: the cosine between the gradients (w.r.t. the student's logits) of
T²·KL(p_T ‖ q_T) and of ½·mean((z̄ − v̄)²) (centred logit matching), and their norm ratio, as T
grows — for a digits teacher trained here and a student at initialisation and after training.

    python examples/studies/high_temperature_gradients.py      # prints JSON and a table (~20 s)
"""

from __future__ import annotations

import json

import torch

import kdlab
from kdlab.data import load_dataset
from kdlab.inference import predict_logits
from kdlab.losses import LogitMSE, SoftTarget
from kdlab.models import MLP
from kdlab.settings import TrainSettings
from kdlab.types import Batch, ModelOutput

TEMPERATURES = [1, 2, 4, 8, 16, 32, 64, 128]


def gradients(term: torch.nn.Module, z: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """∂ term / ∂ z by autograd, one row per sample (the term is a batch mean: × batch size)."""
    z = z.clone().double().requires_grad_(True)
    batch = Batch(torch.zeros(len(z), 1), torch.zeros(len(z), dtype=torch.long))
    loss = term.weight * term(ModelOutput(z), ModelOutput(v.double()), batch)  # as an Objective
    (grad,) = torch.autograd.grad(loss, z)
    return grad * len(z)


def measure(z: torch.Tensor, v: torch.Tensor) -> list[dict[str, float]]:
    # F.mse_loss averages over classes too: ½·mean(...) is LogitMSE at weight ½.
    g_mse = gradients(LogitMSE(weight=0.5, center=True), z, v)
    rows = []
    for t in TEMPERATURES:
        g_kd = gradients(SoftTarget(temperature=float(t)), z, v)
        cos = torch.nn.functional.cosine_similarity(g_kd, g_mse, dim=1)
        ratio = g_kd.norm(dim=1) / g_mse.norm(dim=1)
        rows.append({"T": t, "cosine_mean": cos.mean().item(), "cosine_min": cos.min().item(),
                     "norm_ratio_mean": ratio.mean().item()})  # fmt: skip
    return rows


def main() -> None:
    data = load_dataset("digits", seed=0)
    settings = TrainSettings(epochs=40, optimizer={"name": "adam", "lr": 1e-3}, threads=1)
    torch.manual_seed(0)
    teacher = kdlab.train(MLP(64, [256, 256], 10), data, settings=settings, progress=False).model
    torch.manual_seed(1)
    student = MLP(64, [16], 10)
    v = predict_logits(teacher, data.test)
    result = {"at initialisation": measure(predict_logits(student, data.test), v)}
    kdlab.distill(teacher, student, data, settings=settings, progress=False)
    result["after distillation (T = 4)"] = measure(predict_logits(student, data.test), v)
    print(json.dumps(result, indent=2))
    for name, rows in result.items():
        print(f"\nstudent {name}: T, mean cosine, min cosine, mean ‖∇KD‖/‖∇MSE‖")
        for r in rows:
            print(f"  {r['T']:>4} {r['cosine_mean']:8.4f} {r['cosine_min']:8.4f} "
                  f"{r['norm_ratio_mean']:8.4f}")  # fmt: skip


if __name__ == "__main__":
    main()
