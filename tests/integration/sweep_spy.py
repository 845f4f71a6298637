"""``lre-pl sweep`` that records, in the file ``$SWEEP_SPY_LOG``, which process estimated and evaluated
which task (and Lightning's rank-zero rank after its fit); with ``$SWEEP_SPY_FAIL_RANK`` set, that
global rank fails in its first evaluation. Run as a script, so that the processes a ``spread: tasks``
sweep starts re-run it too."""

import json
import os
import sys

from pytorch_lightning.utilities import rank_zero_only

from lre_pl.cli import main
from lre_pl.experiments.sweep.runner import Sweep

estimate, evaluate = Sweep.estimate, Sweep.evaluate


def record(self, stage: str, relation: str, seed: int) -> None:
    rank = self.place.global_rank if self.place else rank_zero_only.rank  # prompts: the DDP rank
    line = {"stage": stage, "rank": rank, "rank_zero_only": rank_zero_only.rank, "task": [relation, seed]}
    with open(os.environ["SWEEP_SPY_LOG"], "a") as log:
        log.write(json.dumps(line) + "\n")


def spied_estimate(self, relation, seed):
    result = estimate(self, relation, seed)
    record(self, "estimate", relation, seed)
    return result


def spied_evaluate(self, relation, seed):
    if str(self.place.global_rank if self.place else 0) == os.environ.get("SWEEP_SPY_FAIL_RANK"):
        raise RuntimeError(f"injected failure in the evaluation of {relation}")
    evaluate(self, relation, seed)
    record(self, "evaluate", relation, seed)


Sweep.estimate, Sweep.evaluate = spied_estimate, spied_evaluate
if __name__ == "__main__":
    main(sys.argv[1:])
