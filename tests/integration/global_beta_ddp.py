"""Run by test_beta_study under two DDP processes: fit_betas on saved samples, print the learned betas."""

import json
import sys

import torch

from lre_pl.experiments.beta_study.global_beta import BetaSamples, fit_betas

if __name__ == "__main__":
    model, samples_path, devices, batch_size = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    samples = BetaSamples(**torch.load(samples_path, weights_only=True))
    trainer = {"accelerator": "cpu", "devices": devices, "strategy": "ddp" if devices > 1 else "auto"}
    betas = fit_betas(model, samples, epochs=10, batch_size=batch_size, trainer=trainer)
    if int(__import__("os").environ.get("LOCAL_RANK", 0)) == 0:
        print("BETAS " + json.dumps(betas))
