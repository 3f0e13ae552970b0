"""DeepSpeed's engine checkpoints are read without arbitrary pickle (components/models/runtime.load_weights_only):
what its ZeRO-2 and ZeRO-3 optimiser files hold loads; anything that could run code is refused, naming the file.
(The resumes through it are tests/distributed/test_deepspeed.py's, bit for bit.)"""

import pickle

import pytest
import torch

from components.models.runtime import load_weights_only


class Payload:
    """What a hostile checkpoint would smuggle in: unpickling it calls a function of the sender's choosing."""

    def __reduce__(self):
        return (print, ("this ran while loading a checkpoint",))


def test_what_deepspeed_optimiser_checkpoints_hold_loads(tmp_path):
    from deepspeed.runtime.fp16.loss_scaler import LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum
    from deepspeed.utils.tensor_fragment import fragment_address

    state = {
        "optimizer_state_dict": {"loss_scaler": LossScaler(1.0), "zero_stage": ZeroStageEnum.gradients},
        "param_slice_mappings": [{"w": fragment_address(numel=4, start=0)}],
        "fp32_flat_groups": [torch.arange(4.0)],
    }
    path = tmp_path / "zero_pp_rank_0_mp_rank_00_optim_states.pt"
    torch.save(state, path)
    loaded = load_weights_only(str(path), map_location="cpu")
    assert loaded["optimizer_state_dict"]["zero_stage"] is ZeroStageEnum.gradients
    assert loaded["optimizer_state_dict"]["loss_scaler"].cur_scale == 1.0
    assert loaded["param_slice_mappings"][0]["w"] == fragment_address(numel=4, start=0)
    assert torch.equal(loaded["fp32_flat_groups"][0], torch.arange(4.0))


def test_a_checkpoint_that_would_run_code_is_refused_naming_the_file(tmp_path, capsys):
    path = tmp_path / "mp_rank_00_model_states.pt"
    torch.save({"module": {"w": torch.zeros(2)}, "client_state": Payload()}, path)
    with pytest.raises(pickle.UnpicklingError, match=rf"{path}: refused, it holds more than tensors"):
        load_weights_only(str(path))
    assert "this ran" not in capsys.readouterr().out
