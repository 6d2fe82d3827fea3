"""Differential fuzzing of the compiler: random graphs over every registered op (NNSmith-style).

    python tools/fuzz.py --cases 2000                 # seeds 0..1999
    python tools/fuzz.py --cases 500 --first-seed 10000 --out fuzz-failures
    python tools/fuzz.py --onnx --cases 2000          # the ONNX importer on mutated models

With --onnx, case i mutates a small ONNX model (cnncomp/verification/onnx_mutation.py says how)
and imports it: a CnnError is the right answer for a malformed model, anything else (a
traceback) is a finding, saved as OUT/onnx-seed<N>.onnx with the traceback beside it
(reproduce with `cnncomp import OUT/onnx-seed<N>.onnx -o x.cnn --debug`).

Case i is generated from seed first_seed + i (cnncomp/verification/fuzz.py says how), compiled
at -O0, -O1, -O2 and with bottleneck and depthwise at full rank, and compared three ways (ONNX
Runtime and the optimized graph in float64 against the float64 reference of the spec, and every
model against -O0). Each failing case is saved as OUT/seed<N>.cnn, with what failed in its header;
reproduce one with `python tools/fuzz.py --seed N` (weights and inputs are seeded by N too).
Prints how many cases ran clean and how often each op was generated. Exit 1 when a case failed.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from cnncomp.verification.fuzz import ARGUMENT_CHOICES, NOT_GENERATED, generatable_ops, run_case  # noqa: E402


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=200, help="how many cases (default 200)")
    parser.add_argument("--first-seed", type=int, default=0, help="seed of the first case (default 0)")
    parser.add_argument("--seed", type=int, help="run only the case of this seed and print its spec")
    parser.add_argument("--max-layers", type=int, default=8, help="layers per case, at most (default 8)")
    parser.add_argument("--out", default="fuzz-failures", help="folder for failing specs (default fuzz-failures)")
    parser.add_argument("--onnx", action="store_true", help="mutation-fuzz the ONNX importer instead")
    args = parser.parse_args(argv)
    if args.onnx:
        return fuzz_onnx(args)
    seeds = [args.seed] if args.seed is not None else range(args.first_seed, args.first_seed + args.cases)
    out = Path(args.out)
    made, rewrote, failed = Counter(), Counter(), []
    start = time.perf_counter()
    for done, seed in enumerate(seeds, 1):
        case = run_case(seed, args.max_layers)
        made.update(case.ops)
        rewrote.update(case.rewrote)
        if args.seed is not None:
            print(case.text)
        if case.findings:
            failed.append(seed)
            out.mkdir(parents=True, exist_ok=True)
            header = "".join(f"# {line}\n" for f in case.findings for line in str(f).splitlines()[:6])
            (out / f"seed{seed}.cnn").write_text(f"# tools/fuzz.py --seed {seed}\n{header}{case.text}")
            print(f"seed {seed}: {len(case.findings)} finding(s), first: {str(case.findings[0]).splitlines()[0]}",
                  flush=True)
        if done % 250 == 0:
            print(f"... {done} cases, {len(failed)} failed, {time.perf_counter() - start:.0f} s", flush=True)
    elapsed = time.perf_counter() - start
    print(f"{len(seeds)} cases, {len(seeds) - len(failed)} clean, {len(failed)} failed, in {elapsed:.0f} s"
          + (f"; specs in {out}/" if failed else ""))
    print("passes that changed the graph (count of compilations): "
          + (", ".join(f"{name} {count}" for name, count in rewrote.most_common()) or "none"))
    print("ops generated (layers): " + ", ".join(f"{op} {made[op]}" for op in sorted(made, key=made.get,
                                                                                      reverse=True)))
    never = sorted(set(generatable_ops()) - set(made))
    if never and args.seed is None:
        print("never generated in these cases: " + ", ".join(never))
    for op, why in sorted(NOT_GENERATED.items()):
        print(f"not generated: {op}: {why}")
    for (op, param), (values, why) in sorted(ARGUMENT_CHOICES.items()):
        print(f"{op} {param} drawn from {values} only: {why}")
    return 1 if failed else 0


def fuzz_onnx(args) -> int:
    """Mutated ONNX models through the importer; exit 1 when one gave a traceback."""
    import warnings

    from cnncomp.verification.onnx_mutation import mutated_model, run_case

    warnings.simplefilter("ignore")  # onnx and torch deprecation notices, once per case otherwise
    seeds = [args.seed] if args.seed is not None else range(args.first_seed, args.first_seed + args.cases)
    out = Path(args.out)
    outcomes, bases, crashed = Counter(), Counter(), []
    start = time.perf_counter()
    for done, seed in enumerate(seeds, 1):
        case = run_case(seed)
        outcomes[case.outcome] += 1
        bases[case.base.split("(")[0]] += 1
        if args.seed is not None:
            print(f"seed {seed}: {case.base}, {'; '.join(case.mutations)}: {case.outcome}\n{case.message}")
        if case.outcome == "crashed":
            crashed.append(seed)
            out.mkdir(parents=True, exist_ok=True)
            (out / f"onnx-seed{seed}.onnx").write_bytes(mutated_model(seed))
            (out / f"onnx-seed{seed}.txt").write_text(f"{case.base}: {'; '.join(case.mutations)}\n{case.message}")
            print(f"seed {seed}: traceback: {case.message.strip().splitlines()[-1]}", flush=True)
        if done % 500 == 0:
            print(f"... {done} cases, {len(crashed)} tracebacks, {time.perf_counter() - start:.0f} s", flush=True)
    elapsed = time.perf_counter() - start
    print(f"{len(seeds)} mutated models in {elapsed:.0f} s: {outcomes['imported']} imported, {outcomes['refused']} "
          f"refused with a CnnError, {outcomes['crashed']} tracebacks" + (f" (models in {out}/)" if crashed else ""))
    print("base models: " + ", ".join(f"{name} {count}" for name, count in bases.most_common()))
    return 1 if crashed else 0


if __name__ == "__main__":
    sys.exit(main())
