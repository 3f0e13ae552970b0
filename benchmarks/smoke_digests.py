"""What the smoke main job makes, digested: the guard of a refactor that must not change behaviour.

    python benchmarks/smoke_digests.py [--check] [--root DIR] [--out PATH]

Runs the main job on the smoke profile in a fresh project directory (a subprocess, as a user runs it), then digests
what it made, stage by stage: the prepared data sets, the ranked comparisons, every trained model's tensors (names,
dtypes, shapes and bytes; not the file's metadata) and every held-out decoding's responses. ``--check`` compares with
benchmarks/results/smoke_digests.json and exits 1 naming each difference; without it the file is (re)written. The job
runs on one thread (``OMP_NUM_THREADS=1``): a run's thread count follows the machine's other runs
(flows/execution/cores.py), and another count sums floats in another order. Float results differ between CPUs too, so
a check means something only on the CPU the file records.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
from safetensors import safe_open

from components.io import write_json
from components.models.precision import cpu_description

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "benchmarks" / "results" / "smoke_digests.json"
PROFILE = "smoke"
THREADS = 1


def tensors_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with safe_open(str(path), framework="pt") as weights:
        for name in sorted(weights.keys()):
            tensor = weights.get_tensor(name).contiguous()
            digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
            digest.update(tensor.view(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def file_digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def only(paths: list[Path], what: str) -> Path:
    if len(paths) != 1:
        raise SystemExit(f"{what}: {len(paths)} found, expected one (a fresh root runs each stage once)")
    return paths[0]


def digests(root: Path) -> dict[str, str]:
    artifacts = root / "artifacts"
    found = {f"prepared/{p.name}": file_digest(p) for p in sorted((artifacts / "prepared").glob("*.jsonl"))}
    found["comparisons"] = file_digest(only(sorted(artifacts.glob("comparisons/*/preferences.jsonl")), "comparisons"))
    for stage in sorted(p for p in (artifacts / "models").iterdir() if p.is_dir() and not p.name.startswith(".")):
        if stage.name == "evaluation":
            for decoding in sorted(stage.iterdir()):
                responses = only(sorted(decoding.glob("*/responses.json")), f"{decoding.name} responses")
                found[f"evaluation/{decoding.name}"] = file_digest(responses)
        else:
            key = only(sorted(p for p in stage.iterdir() if p.is_dir()), stage.name)
            if (key / "model.safetensors").is_file():
                found[f"models/{stage.name}"] = tensors_digest(key / "model.safetensors")
            for member in sorted(key.glob("*/model.safetensors")):  # an ensemble's members
                found[f"models/{stage.name}/{member.parent.name}"] = tensors_digest(member)
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="compare with the recorded digests instead of writing")
    parser.add_argument("--root", type=Path, help="digest this finished smoke root instead of running one")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="smoke-digests-") as scratch:
        root = args.root
        if root is None:
            root = Path(scratch) / "project"
            command = [sys.executable, "-m", "flows.pipeline", "--profile", PROFILE, "--root", str(root)]
            env = {**os.environ, "OMP_NUM_THREADS": str(THREADS)}
            done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True)
            if done.returncode != 0:
                raise SystemExit(f"the smoke main job failed ({done.returncode}):\n{done.stdout[-3000:]}")
        found = digests(root)
    if not args.check:
        record = {"profile": PROFILE, "threads": THREADS, "cpu": cpu_description()["model_name"], "digests": found}
        write_json(args.out, record)
        print(f"{len(found)} digests written to {args.out}")
        return 0
    recorded = json.loads(args.out.read_text())
    if recorded["cpu"] != cpu_description()["model_name"]:
        print(f"note: recorded on {recorded['cpu']}, checked on {cpu_description()['model']}")
    expected = recorded["digests"]
    differ = sorted(k for k in expected.keys() | found.keys() if expected.get(k) != found.get(k))
    for key in differ:
        print(f"differs: {key}: recorded {expected.get(key)}, now {found.get(key)}")
    print(f"{len(found) - len(differ)} of {len(expected.keys() | found.keys())} digests as recorded")
    return 1 if differ else 0


if __name__ == "__main__":
    sys.exit(main())
