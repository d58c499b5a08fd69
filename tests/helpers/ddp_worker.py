"""Run quant_train.py's job in this process (one rank under torchrun, or alone) and save this
rank's final model state to OUT/rank<RANK>.pt. Used by tests/hawq/test_qat_distributed.py:

    python tests/helpers/ddp_worker.py OUT quant_train args...
    torchrun --standalone --nproc_per_node 2 tests/helpers/ddp_worker.py OUT quant_train args...
"""
import os
import sys

import torch

from hawq.apps.train import run

if __name__ == "__main__":
    out = sys.argv[1]
    res = run(sys.argv[2:])
    rank = os.environ.get("RANK", "0")
    torch.save({"state_dict": res["model"].state_dict(), "top1": res["top1"]}, os.path.join(out, f"rank{rank}.pt"))
