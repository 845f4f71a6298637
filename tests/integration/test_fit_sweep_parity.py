"""A fit and a sweep on the same relation, seed, layer and beta report the same faithfulness.

A random tiny model's faithfulness@1 is 0 everywhere, so a large k (a hit rate strictly between 0
and 1) and every sample's hits at every rank, as both paths counted them, are compared too.
"""

import pytest
import pytorch_lightning as pl
import torch
from test_sweep import rows_of, tiny_config

import lre_pl.evaluation.context
from lre_pl.experiments.sweep.runner import Sweep
from lre_pl.lightning.datamodule import RelationDataModule
from lre_pl.lightning.module import LinearRelationModule

RELATION, SEED, LAYER, BETA, K = "country capital city", 1, 1, 2.0, 40


def test_a_fit_and_a_sweep_report_the_same_faithfulness(tiny_model_dir, tmp_path, monkeypatch):
    recorded = []  # every [N, k] hits matrix that the one shared prefix_hits returned, in call order
    shared = lre_pl.evaluation.context.prefix_hits
    monkeypatch.setattr(
        lre_pl.evaluation.context, "prefix_hits", lambda *args: recorded.append(shared(*args)) or recorded[-1]
    )
    # The sweep's own estimation settings (batch_size 4, chunk_size 11), every test sample validated.
    module = LinearRelationModule(model=tiny_model_dir, layers=LAYER, beta=BETA, top_k=K, chunk_size=11)
    data = RelationDataModule(
        relation=RELATION, model=tiny_model_dir, seed=SEED, batch_size=4, filter_known=False
    )
    trainer = pl.Trainer(
        accelerator="cpu", max_epochs=1, num_sanity_val_steps=0, enable_checkpointing=False,
        enable_progress_bar=False, logger=False, default_root_dir=tmp_path / "fit",
    )  # fmt: skip
    trainer.fit(module, datamodule=data)
    fit_hits = torch.cat(recorded)  # [19, K]: the validation batches of the one layer
    recorded.clear()

    config = tiny_config(
        tiny_model_dir, tmp_path / "sweep", relations=[RELATION], trials=[SEED], layers=[LAYER],
        betas=[1.0, BETA], ranks=[], comparison_edits=False, estimators=["lre"], top_k=K,
    )  # fmt: skip
    Sweep(config, command="lre-pl sweep (parity test)").run()
    rows = next(iter(rows_of(tmp_path / "sweep").values()))
    grid = {
        row["metric"]: row
        for row in rows
        if row["kind"] == "grid" and row["estimator"] == "lre" and row["layer"] == str(LAYER)
        and row["beta"] == BETA and row["split"] == "all"
    }  # fmt: skip
    assert sorted(grid) == ["faithfulness@1", f"faithfulness@{K}"]
    assert grid["faithfulness@1"]["n"] == len(fit_hits) == len(data.prompts.test_samples) == 19

    for k in (1, K):
        assert module.last_metrics[f"val/faithfulness@{k}"] == pytest.approx(
            grid[f"faithfulness@{k}"]["value"]
        )
    assert 0 < module.last_metrics[f"val/faithfulness@{K}"] < 1  # a comparison that can fail
    # The sweep decodes the layer at beta 1 (its layer search), then scans beta at that layer.
    assert len(recorded) == 2
    assert torch.equal(recorded[1], fit_hits) and not torch.equal(recorded[0], fit_hits)
