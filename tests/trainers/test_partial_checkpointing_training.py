"""A plan with selective checkpointing (the first encoder blocks checkpointed, one of them keeping
its attention's output, as the planner writes where memory allows) trains with exactly those
blocks recomputed, and its checkpoint carries the choice to prediction."""

from __future__ import annotations


from nnsam3d.inference.ensemble_loading import load_ensemble
from nnsam3d.schemas.plans import DEFAULT_PLANS_NAME, Plans
from nnsam3d.trainers import checkpointing
from nnsam3d.trainers.registry import get_trainer_class
from nnsam3d.trainers.request import TrainingRequest
from tests.trainers.rebuilt_network import assert_rebuilt_network_predicts_the_same


def test_a_partially_checkpointed_plan_trains_and_is_rebuilt_from_its_checkpoint(tiny_dataset, nnsam3d_folders):
    plans_file = nnsam3d_folders.preprocessed / tiny_dataset / f"{DEFAULT_PLANS_NAME}.json"
    plans = Plans.load(plans_file)
    plans.network = plans.network.replace(activation_checkpointing=True, checkpointed_blocks=2, kept_attention_blocks=(1,))
    plans.save(plans_file)

    request = TrainingRequest(dataset=tiny_dataset, fold="0", device="cpu", num_epochs=1, iterations_per_epoch=1)
    trainer = get_trainer_class("nnSAM3DTrainer")(request)
    trainer.initialize()
    try:
        network = trainer.network_module
        assert network.encoder.checkpointed == (True, True, False, False)
        assert network.encoder.kept_attention == (False, True, False, False)
        calls = [0] * len(network.encoder.blocks)
        for index, block in enumerate(network.encoder.blocks):
            block.register_forward_pre_hook(lambda module, args, index=index: calls.__setitem__(index, calls[index] + 1))
        trainer.train_step(next(trainer.train_stream))
        assert calls == [2, 2, 1, 1]  # the trainer's real step: the first two blocks recomputed
        trainer.save_checkpoint(checkpointing.FINAL)
    finally:
        trainer._stop_streams()

    ensemble = load_ensemble([trainer.output_folder.parent], ["0"], checkpointing.FINAL)
    assert ensemble.plans.network.checkpointed_blocks == 2 and ensemble.plans.network.kept_attention_blocks == (1,)
    rebuilt = ensemble.networks[0].eval()
    assert rebuilt.encoder.checkpointed == (True, True, False, False)
    assert_rebuilt_network_predicts_the_same(network, rebuilt)
