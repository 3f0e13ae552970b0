"""benchmarks/smoke_digests.py digests what a run made by content: a model's tensors, not its file's metadata (a
rewritten header digests the same), and one changed bit of one weight digests differently; a stage written twice is
refused rather than digested at random."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file

from benchmarks.smoke_digests import digests


def smoke_like_root(root, weight: torch.Tensor, metadata: dict | None = None):
    (root / "artifacts/prepared").mkdir(parents=True)
    (root / "artifacts/prepared/sft_train.jsonl").write_text('{"prompt": "p", "response": "r"}\n')
    (root / "artifacts/comparisons/k1").mkdir(parents=True)
    (root / "artifacts/comparisons/k1/preferences.jsonl").write_text('{"chosen": "a", "rejected": "b"}\n')
    (root / "artifacts/models/sft/k2").mkdir(parents=True)
    save_file({"w": weight, "b": torch.zeros(2)}, root / "artifacts/models/sft/k2/model.safetensors", metadata)
    (root / "artifacts/models/evaluation/sft-greedy/k3").mkdir(parents=True)
    (root / "artifacts/models/evaluation/sft-greedy/k3/responses.json").write_text(json.dumps({"texts": ["x"]}))
    return root


def test_a_model_digests_by_its_tensors_and_one_bit_changes_it(tmp_path):
    weight = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    plain = digests(smoke_like_root(tmp_path / "a", weight))
    assert set(plain) == {"prepared/sft_train.jsonl", "comparisons", "models/sft", "evaluation/sft-greedy"}
    assert digests(smoke_like_root(tmp_path / "b", weight, {"written": "elsewhere"})) == plain
    nudged = weight.clone()
    nudged.view(-1).view(torch.int32)[3] ^= 1  # the last bit of 4.0's mantissa
    changed = digests(smoke_like_root(tmp_path / "c", nudged))
    assert {k for k in plain if plain[k] != changed[k]} == {"models/sft"}


def test_a_stage_written_twice_is_refused(tmp_path):
    root = smoke_like_root(tmp_path / "a", torch.ones(2, 2))
    (root / "artifacts/comparisons/k9").mkdir()
    (root / "artifacts/comparisons/k9/preferences.jsonl").write_text("{}\n")
    with pytest.raises(SystemExit, match="comparisons: 2 found"):
        digests(root)
    model_twice = smoke_like_root(tmp_path / "b", torch.ones(2, 2))
    (model_twice / "artifacts/models/sft/k8").mkdir()
    with pytest.raises(SystemExit, match="sft: 2 found"):
        digests(model_twice)
