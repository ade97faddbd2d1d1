"""The model checkpoint: pruned tensors stored sparsely, read back exactly."""

from __future__ import annotations


import pytest
import torch

from sensreg.records.checkpoint import FORMAT, CheckpointError, load_checkpoint, save_model
from sensreg.run.init_weights import load_init_state
from sensreg.models import build_model
from sensreg.method.pruning import Masks, prunable_names


def pruned_lenet300(keep_fraction: float, seed: int = 0) -> tuple[torch.nn.Module, dict[str, torch.Tensor]]:
    torch.manual_seed(seed)
    model = build_model("lenet300", 10, (1, 28, 28))
    masks = Masks(model, prunable_names(model, "weights"))
    # the smallest (1 - keep_fraction) of the magnitudes go
    threshold = torch.quantile(torch.cat([p.detach().abs().flatten() for p in masks.params])[::7],
                               1 - keep_fraction).item()
    masks.prune_below_(threshold)
    return model, masks.state_dict()


def save(path, model, masks):
    save_model(path, model, masks, model_name="lenet300", num_classes=10, input_shape=(1, 28, 28),
               config={"data": {"name": "mnist"}})


@pytest.mark.parametrize("keep", [0.05, 0.9])  # stored as positions; as the mask itself
def test_round_trip_is_exact(tmp_path, keep):
    model, masks = pruned_lenet300(keep)
    save(tmp_path / "model.pt", model, masks)
    ckpt = load_checkpoint(tmp_path / "model.pt")
    state = model.state_dict()
    assert set(ckpt["state_dict"]) == set(state)
    for name, tensor in state.items():
        assert ckpt["state_dict"][name].dtype == tensor.dtype
        assert torch.equal(ckpt["state_dict"][name], tensor), name
    assert set(ckpt["masks"]) == set(masks)
    for name, mask in masks.items():
        assert torch.equal(ckpt["masks"][name], mask.bool()), name
        assert not ckpt["state_dict"][name][~ckpt["masks"][name]].any()  # pruned entries are zeros
    assert torch.equal(load_init_state(tmp_path / "model.pt")["fc1.weight"], state["fc1.weight"])


def test_size_follows_the_remaining_weights(tmp_path):
    sizes = {}
    for keep in (0.5, 0.05):
        model, masks = pruned_lenet300(keep)
        save(tmp_path / f"{keep}.pt", model, masks)
        sizes[keep] = (tmp_path / f"{keep}.pt").stat().st_size
    dense_bytes = 4 * 266_610
    # about 8 bytes (position and value) per kept weight, plus the dense biases and the framing
    assert sizes[0.05] < 0.15 * dense_bytes
    assert sizes[0.5] > 5 * sizes[0.05]


def test_a_mostly_kept_network_costs_at_most_a_quarter_more_than_dense(tmp_path):
    for keep in (0.3, 0.9, 1.0):
        model, masks = pruned_lenet300(keep)
        save(tmp_path / f"{keep}.pt", model, masks)
        payload = torch.load(tmp_path / f"{keep}.pt", weights_only=True)
        assert all("mask" in entry and "indices" not in entry for entry in payload["sparse"].values())
        dense_bytes = 4 * 266_610
        assert (tmp_path / f"{keep}.pt").stat().st_size < (keep + 0.25) * dense_bytes + 20_000


def test_version_1_dense_checkpoints_still_load(tmp_path):
    model, masks = pruned_lenet300(0.2)
    payload = {"format": FORMAT, "format_version": 1, "model_name": "lenet300", "num_classes": 10,
               "input_shape": [1, 28, 28], "state_dict": model.state_dict(), "masks": masks, "config": {}}
    torch.save(payload, tmp_path / "old.pt")
    ckpt = load_checkpoint(tmp_path / "old.pt")
    assert torch.equal(ckpt["state_dict"]["fc2.weight"], model.state_dict()["fc2.weight"])


def test_damaged_sparse_tensor_is_named(tmp_path):
    model, masks = pruned_lenet300(0.2)
    save(tmp_path / "model.pt", model, masks)
    payload = torch.load(tmp_path / "model.pt", weights_only=True)
    payload["sparse"]["fc1.weight"]["indices"] = torch.tensor([10**9], dtype=torch.int32)
    torch.save(payload, tmp_path / "bad.pt")
    with pytest.raises(CheckpointError, match="damaged"):
        load_checkpoint(tmp_path / "bad.pt")
    payload["format_version"] = 99
    torch.save(payload, tmp_path / "future.pt")
    with pytest.raises(CheckpointError, match="version 99"):
        load_checkpoint(tmp_path / "future.pt")


@pytest.mark.parametrize("mask", [torch.ones(10, dtype=torch.bool),  # not the tensor's size
                                  torch.ones(300 * 784, dtype=torch.bool)])  # more kept than values stored
def test_a_damaged_mask_is_named(tmp_path, mask):
    model, masks = pruned_lenet300(0.9)
    save(tmp_path / "model.pt", model, masks)
    payload = torch.load(tmp_path / "model.pt", weights_only=True)
    payload["sparse"]["fc1.weight"]["mask"] = mask
    torch.save(payload, tmp_path / "bad.pt")
    with pytest.raises(CheckpointError, match="damaged"):
        load_checkpoint(tmp_path / "bad.pt")


class RunsCode:
    """Unpickled, it would call its __reduce__ target: here a marker file is written."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_a_pickle_that_would_run_code_is_refused_as_such_and_runs_nothing(tmp_path):
    marker = tmp_path / "ran"
    torch.save({"state_dict": {}, "trap": RunsCode(marker)}, tmp_path / "trap.pt")
    for load in (load_checkpoint, load_init_state):
        with pytest.raises(CheckpointError, match=r"holds more than weights.*never does") as caught:
            load(tmp_path / "trap.pt")
        assert "corrupt" not in str(caught.value)
    assert not marker.exists()
    (tmp_path / "cut.pt").write_bytes((tmp_path / "trap.pt").read_bytes()[:100])
    with pytest.raises(CheckpointError, match="truncated, corrupt"):  # a damaged file is still called that
        load_checkpoint(tmp_path / "cut.pt")
