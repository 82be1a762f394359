"""Where a `memlong train` step of the default model goes: MemLong mode with the paper's layout
(memory layer 15, retrieval layers 16/20/24/28), LoRA r=16 on the upper layers, 1 x 1,024 tokens
of a training document, float32, one thread; segments 3-6 averaged (memory full by then).

    python scripts/experiments/profile_train_step.py --json runs/train_step_profile.json

It times the forward through the frozen lower stack (layers 1..15: what precomputing their
outputs once per training document would save, with the retriever's embedding of each chunk),
the upper layers' forward, and the backward. Layer boundaries are timed with forward hooks."""

import argparse
import json
import time

import torch


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default="runs/corpus")
    p.add_argument("--json", default=None)
    args = p.parse_args()
    torch.set_num_threads(1)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    import memlong
    from memlong import profiling
    from memlong.pretrained import default_base_model_path
    from memlong.training import LoraSpec, document_texts, freeze_for_memlong

    path = default_base_model_path()
    tok = AutoTokenizer.from_pretrained(path)
    base = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    cfg = memlong.MemLongConfig.for_num_layers(30, chunk_size=128, top_k=4, memory_capacity=32768, local_window=1024)
    model = memlong.wrap(base, cfg, retriever="minilm", tokenizer=tok)
    trained = freeze_for_memlong(model, LoraSpec(r=16))
    trained.train()
    for text in document_texts(args.data, "train")():
        ids = tok(text, add_special_tokens=False)["input_ids"]
        if len(ids) >= 6 * 1024:
            break
    ids = torch.tensor([ids[: 6 * 1024]])
    marks: dict = {}
    layers = model.model.layers
    layers[0].register_forward_pre_hook(lambda *_: marks.__setitem__("start", time.perf_counter()))
    layers[cfg.memory_layer_index].register_forward_hook(lambda *_: marks.__setitem__("lower", time.perf_counter()))
    layers[-1].register_forward_hook(lambda *_: marks.__setitem__("upper", time.perf_counter()))
    memory, rows = model.new_memory(1), []
    for s in range(6):
        seg = ids[:, s * 1024 : (s + 1) * 1024]
        with profiling.record() as t:
            t0 = time.perf_counter()
            out = trained(input_ids=seg, labels=seg, cache=memory)
            t1 = time.perf_counter()
            out.loss.backward()
            t2 = time.perf_counter()
        trained.zero_grad(set_to_none=True)
        rows.append(
            {
                "step_s": t2 - t0,
                "forward_s": t1 - t0,
                "backward_s": t2 - t1,
                "lower_forward_s": marks["lower"] - marks["start"],
                "upper_forward_s": marks["upper"] - marks["lower"],
                "retriever_s": t.seconds.get("retriever", 0.0),
            }
        )
    later = rows[2:]
    mean = {k: round(sum(r[k] for r in later) / len(later), 3) for k in rows[0]}
    mean["precompute_would_save"] = round((mean["lower_forward_s"] + mean["retriever_s"]) / mean["step_s"], 3)
    res = {
        "memory_layer": cfg.memory_layer,
        "retrieval_layers": list(cfg.retrieval_layers),
        "mean_segments_3_to_6": mean,
        "segments": rows,
        "machine": profiling.machine(),
    }
    print(json.dumps(mean, indent=1))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(res, f, indent=1)
            f.write("\n")


if __name__ == "__main__":
    main()
