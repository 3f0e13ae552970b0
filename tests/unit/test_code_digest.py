"""Stage keys hold a digest of the training code: an edited training module trains anew instead of reusing an output
an older code made (before, only the validation and decoding keys held their code)."""

import shutil
from pathlib import Path

from flows.execution.stage_runs import TRAINING_CODE, code_digest, training_code

REPO = Path(__file__).resolve().parents[2]


def copy_of_the_code(tmp_path: Path) -> Path:
    root = tmp_path / "code"
    for path in (*TRAINING_CODE, "components/adapters"):
        source, target = REPO / path, root / path
        target.parent.mkdir(parents=True, exist_ok=True)
        (shutil.copytree if source.is_dir() else shutil.copy)(source, target)
    return root


def test_the_digest_is_the_repositorys_and_changes_with_any_training_file_only(tmp_path):
    root = copy_of_the_code(tmp_path)
    before = code_digest(root)
    assert before == training_code()  # the copy is byte-identical, so is its digest
    (root / "components/adapters/tracking.py").write_text("# not training code\n", encoding="utf-8")
    assert code_digest(root) == before
    ppo = root / "components/training/ppo.py"
    ppo.write_bytes(ppo.read_bytes() + b"\n")  # one byte more in PPO's own module
    edited = code_digest(root)
    assert edited != before
    (root / "flows/execution/stage_calls.py").write_bytes(b"")  # a single file among the paths counts too
    assert code_digest(root) not in (before, edited)


def test_a_file_moved_between_training_modules_changes_the_digest(tmp_path):
    """Each file's path is hashed with its bytes: the same bytes under another name are other code."""
    root = copy_of_the_code(tmp_path)
    before = code_digest(root)
    (root / "components/training/ppo.py").rename(root / "components/training/ppo_renamed.py")
    assert code_digest(root) != before
