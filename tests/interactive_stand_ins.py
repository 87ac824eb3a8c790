"""Stand-ins shared by the interactive session's and the annotation server's tests.

``PromptOracle``: a network whose decoder turns the prompt into logits by a fixed rule (class 1
where the normalised image is bright, the prior kept, a positive click's ball adds its class, a
negative one removes it), so that what a click must do is known exactly; it counts the tiles it encodes.
``ClickIgnoringNetwork``: takes the prompt and ignores it (class 1's probability grows with the
intensity), so that what a click changes is the session's enforcement alone.
``write_random_interactive_model``: a one-fold interactive model folder with random weights (its
prompt branch randomised too, so clicks change the output), for tests of commands and servers.
"""

from __future__ import annotations

import dataclasses

import torch
from torch import nn

from nnsam3d.demo.synthetic_dataset import SyntheticDatasetSpec, generate_synthetic_dataset
from nnsam3d.io.checkpoint_file import ModelCheckpoint, save_checkpoint
from nnsam3d.io.raw_dataset import DatasetDescription
from nnsam3d.model.network import build_network
from nnsam3d.model.prompt_encoder import prompt_channel, prompt_channels

ORACLE_CLASSES = 3
INTERACTIVE_TRAINER = "nnSAM3DTrainer_interactive"


class PromptOracle(nn.Module):
    """A stand-in network with a known answer to clicks (module docstring); counts the tiles it encodes."""

    is_interactive = True

    def __init__(self):
        super().__init__()
        self.encoder_calls = 0
        self.deep_supervision = False

    def encode(self, x):
        self.encoder_calls += x.shape[0]  # tiles encoded, whether one at a time or in a batch
        return [x]

    def decode(self, x, features, prompts=None):
        logits = torch.zeros((x.shape[0], ORACLE_CLASSES, *x.shape[2:]))
        logits[:, 1] = 10 * (features[0][:, 0] > 0.5).float() - 5
        logits[:, 2] = -5
        if prompts is not None:
            for label in (1, 2):
                prior = prompts[:, prompt_channel("prior", label, ORACLE_CLASSES)]
                positive = prompts[:, prompt_channel("positive", label, ORACLE_CLASSES)]
                negative = prompts[:, prompt_channel("negative", label, ORACLE_CLASSES)]
                logits[:, label] = 10 * prior - 5 + 40 * (positive > 0.5) - 40 * (negative > 0.5)
        return logits

    def forward(self, x, prompts=None):
        return self.decode(x, self.encode(x), prompts)


class ClickIgnoringNetwork(nn.Module):
    """An interactive stand-in that ignores every prompt: class 1's logit is ``4 (x - 1)`` of the
    normalised intensity x (with the tests' CT normalisation (HU - 80) / 100: probability 0.40 at
    170 HU, 0.99 at 300 HU, 1e-5 at -100 HU), class 2 never."""

    is_interactive = True

    def __init__(self):
        super().__init__()
        self.deep_supervision = False

    def encode(self, x):
        return [x]

    def decode(self, x, features, prompts=None):
        logits = torch.zeros((x.shape[0], ORACLE_CLASSES, *x.shape[2:]))
        logits[:, 1] = 4 * (features[0][:, 0] - 1.0)
        logits[:, 2] = -20
        return logits

    def forward(self, x, prompts=None):
        return self.decode(x, self.encode(x), prompts)


def write_random_interactive_model(root, make_plans):
    """(dataset name, raw folder, model folder) of a synthetic dataset under ``root / "raw"`` and a
    one-fold interactive model of random weights in ``root / "results"`` (the nnsam3d folders must
    already point into ``root``)."""
    spec = SyntheticDatasetSpec(num_training=1, num_test=2, shape=(10, 40, 40))
    raw_dir = generate_synthetic_dataset(root / "raw", spec)
    description = DatasetDescription.from_file(raw_dir / "dataset.json")
    plans = make_plans((3.0, 1.0, 1.0), dataset_name=spec.folder_name)
    plans = dataclasses.replace(plans, network=plans.network.replace(
        prompt_channels=prompt_channels(description.num_classes)))
    torch.manual_seed(0)
    network = build_network(plans.network)
    with torch.no_grad():
        for parameter in network.prompt_encoder.parameters():
            parameter.normal_(0, 0.3)
    model_dir = root / "results" / spec.folder_name / f"{INTERACTIVE_TRAINER}__nnsam3d_plans"
    save_checkpoint(ModelCheckpoint(INTERACTIVE_TRAINER, "0", 1, plans.to_json(), description.to_json(),
                                    network.state_dict()), model_dir / "fold_0" / "checkpoint_final.pth")
    return spec.folder_name, raw_dir, model_dir
