"""``--channels-last``: the decoder's convolutions run on channels-last weights and tensors, and the
training step computes what the default layout computes (the same loss, the same update), and its
checkpoint predicts the same in a network of the default layout."""

from __future__ import annotations

import pytest
import torch

from nnsam3d.inference.ensemble_loading import load_ensemble
from nnsam3d.model.network import COMPILE_MODES, compile_network
from nnsam3d.trainers import checkpointing
from nnsam3d.trainers.registry import get_trainer_class
from nnsam3d.trainers.request import TrainingRequest

CHANNELS_LAST = torch.channels_last_3d


def trained_once(dataset: str, channels_last: bool):
    request = TrainingRequest(dataset=dataset, fold="0", device="cpu", num_epochs=1, iterations_per_epoch=1,
                              channels_last=channels_last)
    trainer = get_trainer_class("nnSAM3DTrainer")(request)
    trainer.initialize()
    try:
        batch = next(trainer.train_stream)
        loss = trainer.train_step(batch)
        trainer.save_checkpoint(checkpointing.FINAL)
    finally:
        trainer._stop_streams()
    return trainer, float(loss), batch


def conv_weights(network) -> dict:
    return {name: p for name, p in network.decoder.named_parameters() if p.dim() == 5}


def test_a_channels_last_step_equals_the_default_step(tiny_dataset):
    reference, reference_loss, reference_batch = trained_once(tiny_dataset, channels_last=False)
    ours, loss, batch = trained_once(tiny_dataset, channels_last=True)
    assert torch.equal(batch["data"], reference_batch["data"])  # same seed, same batch

    weights = conv_weights(ours.network_module)
    assert weights and all(w.is_contiguous(memory_format=CHANNELS_LAST) for w in weights.values())
    assert not any(w.is_contiguous(memory_format=CHANNELS_LAST) and not w.is_contiguous()
                   for w in conv_weights(reference.network_module).values())
    assert loss == pytest.approx(reference_loss, rel=1e-5)
    # The gradients, not the updated weights: AdamW's first step is about sign(gradient), which
    # turns rounding differences of near-zero gradients into full-size steps.
    # Some gradients are rounding noise (1e-10) in both: compared on the scale of the largest.
    reference_parameters = dict(reference.network_module.named_parameters())
    scale = max(float(p.grad.abs().max()) for p in reference_parameters.values() if p.grad is not None)
    compared = 0
    for name, parameter in ours.network_module.named_parameters():
        expected = reference_parameters[name].grad
        if expected is None:
            assert parameter.grad is None, name
            continue
        assert float((parameter.grad - expected).abs().max()) <= 1e-4 * scale, name
        compared += 1
    assert compared > 20

    # The activations the decoder's convolutions produce are channels-last too (not only the weights).
    outputs = []
    hook = ours.network_module.decoder.stages[1][0][0].register_forward_hook(lambda m, i, o: outputs.append(o))
    with torch.no_grad():
        ours.network_module(batch["data"])
    hook.remove()
    assert outputs[0].is_contiguous(memory_format=CHANNELS_LAST)

    # Its checkpoint loads into a network of the default layout, which predicts the same.
    rebuilt = load_ensemble([ours.output_folder.parent], ["0"], checkpointing.FINAL).networks[0].eval()
    assert not any(w.is_contiguous(memory_format=CHANNELS_LAST) and not w.is_contiguous()
                   for w in conv_weights(rebuilt).values())
    network = ours.network_module.eval()
    network.deep_supervision = False
    with torch.no_grad():
        torch.testing.assert_close(rebuilt(batch["data"]), network(batch["data"]), rtol=1e-4, atol=1e-5)


def test_compile_modes_are_checked():
    assert COMPILE_MODES == ("default", "reduce-overhead", "max-autotune")
    with pytest.raises(ValueError, match="compile mode must be one of default, reduce-overhead, max-autotune"):
        compile_network(torch.nn.Identity(), "fast")


@pytest.mark.parametrize("saved_channels_last", [False, True])
def test_a_run_resumed_in_the_other_layout_keeps_its_moments_in_the_parameters_layout(tiny_dataset, saved_channels_last):
    first, _, _ = trained_once(tiny_dataset, channels_last=saved_channels_last)
    first.save_checkpoint(checkpointing.LATEST)
    saved = {name: first.optimization.optimizer.state[p]["exp_avg"].clone()
             for name, p in first.network_module.named_parameters() if p in first.optimization.optimizer.state}
    request = TrainingRequest(dataset=tiny_dataset, fold="0", device="cpu", num_epochs=2, iterations_per_epoch=1,
                              continue_training=True, channels_last=not saved_channels_last)
    resumed = get_trainer_class("nnSAM3DTrainer")(request)
    resumed.initialize()
    try:
        state = resumed.optimization.optimizer.state
        moved = 0
        for name, parameter in resumed.network_module.named_parameters():
            if name not in saved:
                continue
            for key in ("exp_avg", "exp_avg_sq"):
                assert state[parameter][key].stride() == parameter.stride(), (name, key)
            torch.testing.assert_close(state[parameter]["exp_avg"], saved[name], rtol=0, atol=0)
            moved += parameter.dim() == 5 and name.startswith("decoder.")
        assert moved > 0  # some moments did change layout
        resumed.train_step(next(resumed.train_stream))
    finally:
        resumed._stop_streams()
