"""float32 against bfloat16 autocast on this machine's CPU: one linear layer of the default model's
MLP (576 -> 1536, 1,024 tokens), forward and backward, best of 5, one thread.

    python scripts/experiments/bench_bfloat16.py --json docs/results/bench_bfloat16.json

Why `memlong train --mixed-precision bf16` and `memlong pretrain --bf16` warn on CPUs without
AVX-512 (memlong.profiling.slow_bfloat16)."""

import argparse
import json
import time

import torch

from memlong.profiling import machine, slow_bfloat16


def timed(bf16: bool, reps: int = 5) -> dict:
    torch.manual_seed(0)
    x0, lin = torch.randn(1024, 576), torch.nn.Linear(576, 1536)
    fwd, bwd = [], []
    for _ in range(reps):
        x = x0.clone().requires_grad_(True)
        t0 = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            y = lin(x)
        t1 = time.perf_counter()
        y.float().sum().backward()
        fwd.append(t1 - t0)
        bwd.append(time.perf_counter() - t1)
    return {"forward_s": min(fwd), "backward_s": min(bwd)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--json", default=None)
    args = p.parse_args()
    torch.set_num_threads(1)
    res = {"float32": timed(False), "bfloat16_autocast": timed(True)}
    res["slowdown"] = {
        k: round(res["bfloat16_autocast"][k] / res["float32"][k], 1) for k in ("forward_s", "backward_s")
    }
    res["cpu_capability"] = torch.backends.cpu.get_cpu_capability()
    res["warning"] = slow_bfloat16("cpu")
    res["machine"] = machine()
    print(json.dumps(res, indent=2))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(res, f, indent=2)
            f.write("\n")


if __name__ == "__main__":
    main()
