"""The router's PII check (`detect_pii`) on 1 MB prompts: pieces around trigger matches against a whole read.

    .venv/bin/python benchmarks/pii_signals.py [--chars 1000000]

Prints, per prompt shape, what each way finds and its seconds, and the ratio. The whole read (each
recognizer reads the whole text, and the phone recognizer tries every candidate) is what the tests compare
the pieces with; `router_models/router/signals.py` says why pieces. Shapes: RouterBench prompts joined
(prose), prose with a phone number at its end, a table of integers, one of floats, and one of 3-digit
numbers with a phone number after it; then a run of `a.a.a.` before an e-mail address.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from pipelines.settings import Settings  # noqa: E402
from router_models.router.signals import PII_MIN_SCORE, _detect_pii  # noqa: E402

PHONE = "\nReach me at (415) 555-2671 today."


def shapes(chars: int) -> dict[str, str]:
    rng = np.random.default_rng(0)
    prompts = pd.read_csv(Settings().shared_data_dir / "routerbench" / "prompts_train.csv")["prompt"]
    prose = "\n\n".join(prompts.tolist())
    prose = (prose * (chars // len(prose) + 1))[:chars]
    rows = chars // 60 + 1
    ints = "\n".join(" ".join(str(v) for v in rng.integers(0, 10**6, size=8)) for _ in range(rows))
    floats = "\n".join(",".join(f"{v:.3f}" for v in rng.normal(size=6) * 1000) for _ in range(rows))
    small = " ".join(str(v) for v in rng.integers(100, 1000, size=chars // 4))
    return {
        "prose (RouterBench prompts)": prose,
        "prose, a phone number last": prose[: chars - len(PHONE)] + PHONE,
        "table of integers": ints[:chars],
        "table of floats": floats[:chars],
        "3-digit numbers, a phone number last": small[: chars - len(PHONE)] + PHONE,
        # Presidio's e-mail pattern backtracks through such a run from each of its starts: kept short
        "10,000 chars of a.a.a., an address last": "a." * 5_000 + " x@example.com",
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--chars", type=int, default=1_000_000)
    args = ap.parse_args()
    _detect_pii("warm up: 555 0134 and a@b.co", PII_MIN_SCORE)  # builds the recognizers
    print(f"detect_pii on {args.chars:,}-character prompts (seconds; found):")
    for name, text in shapes(args.chars).items():
        row = {}
        for how, gated in (("pieces", True), ("whole", False)):
            t0 = time.perf_counter()
            found = _detect_pii(text, PII_MIN_SCORE, gated=gated)
            row[how] = (time.perf_counter() - t0, ", ".join(found) or "nothing")
        (tp, fp), (tw, fw) = row["pieces"], row["whole"]
        print(f"  {name:40s} pieces {tp:6.2f} s ({fp}); whole {tw:6.2f} s ({fw}); {tw / tp:5.1f}x")


if __name__ == "__main__":
    main()
