"""Cost of reporting one transition's reward terms per tick: ``Task.term_values``.

The service reports each term of the transition a STATE completed, once per tick, after the
ACTION is sent. This times one ``Task.term_values(obs, act, next_obs)`` call per task (1-D numpy
inputs, float64) next to the same terms from float32 tensors under ``torch.no_grad`` and the
bare ``Task.terms`` call, in microseconds (the minimum over repeats of a timed loop's mean).

    python benchmarks/reward_terms.py [--quick]

The last line printed is one JSON object with all figures.
"""

from __future__ import annotations

import argparse
import json
import timeit

import numpy as np
import torch

import bench_common  # noqa: F401  (this checkout on sys.path)
from controller.tasks import TASKS
from controller.tasks.base import Task


def per_task(task: Task, number: int, repeats: int) -> dict[str, float]:
    rng = np.random.default_rng(0)
    obs, nxt = rng.standard_normal(task.obs_dim), rng.standard_normal(task.obs_dim)
    act = rng.uniform(task.action_low, task.action_high)
    reward_terms = task.terms
    assert reward_terms is not None  # the built-in tasks state their rewards

    def term_values() -> object:
        return task.term_values(obs, act, nxt)

    def float32_no_grad() -> object:
        with torch.no_grad():
            tensors = (torch.tensor(x, dtype=torch.float32) for x in (obs, act, nxt))
            terms = reward_terms(*tensors)
        return {k: float(v) for k, v in terms.items()}

    tensors = [torch.from_numpy(x) for x in (obs, act, nxt)]

    def terms_only() -> object:
        return reward_terms(*tensors)

    out = {}
    for name, fn in (("term_values_us", term_values), ("float32_no_grad_us", float32_no_grad),
                     ("terms_only_us", terms_only)):  # fmt: skip
        best = min(timeit.repeat(fn, number=number, repeat=repeats)) / number
        out[name] = round(best * 1e6, 1)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer calls, same code")
    args = parser.parse_args(argv)
    number, repeats = (200, 3) if args.quick else (2000, 7)
    torch.set_num_threads(1)
    results = {}
    print(f"{'task':<18} {'term_values':>12} {'f32 no_grad':>12} {'terms only':>11}   (us/call)")
    for name, task in TASKS.items():
        r = per_task(task, number, repeats)
        results[name] = r
        print(f"{name:<18} {r['term_values_us']:>12.1f} {r['float32_no_grad_us']:>12.1f} "
              f"{r['terms_only_us']:>11.1f}")  # fmt: skip
    print(json.dumps({"benchmark": "reward_terms", "quick": args.quick, "results": results}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
