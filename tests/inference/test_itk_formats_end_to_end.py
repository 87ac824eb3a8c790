"""A dataset in MetaImage (.mha) and one in NRRD (.nrrd): integrity check, plan, preprocess, train
(one tiny epoch), predict and evaluate, with predictions written in the input's format exactly on
the input's grid (oblique, permuted and anisotropic inputs)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import SimpleITK as sitk

from nnsam3d.commands.evaluate import main as evaluate_main
from nnsam3d.commands.predict import main as predict_main
from nnsam3d.commands.train import main as train_main
from nnsam3d.demo.synthetic_dataset import SyntheticDatasetSpec, generate_synthetic_dataset
from nnsam3d.planners.plan_and_preprocess import plan_and_preprocess, plans_path

SHRINK = {"patch_size": (8, 32, 32), "adapter_dim": 16, "decoder_channels": (8, 16, 32, 64)}


@pytest.fixture(scope="module", params=(".mha", ".nrrd"))
def trained(request, tmp_path_factory, point_folders):
    """(ending, dataset name, raw folder) after verify + plan + preprocess + one tiny epoch on fold 'all'."""
    ending = request.param
    root = tmp_path_factory.mktemp(f"itk{ending.replace('.', '_')}")
    with pytest.MonkeyPatch.context() as patch:
        point_folders(root, patch)
        # Test cases (indices 5 and 6) come out oblique and PIR; spacings differ so preprocessing resamples.
        spec = SyntheticDatasetSpec(dataset_id=992, name=f"Itk{ending[1:].capitalize()}", num_training=5, num_test=2,
                                    shape=(10, 32, 32), orientations=("RAS", "LPS", "ASL", "LAS", "RAS", "oblique", "PIR"),
                                    case_spacings=((3.0, 1.0, 1.0), (2.5, 0.9, 0.9)), file_ending=ending)
        raw_dir = generate_synthetic_dataset(root / "raw", spec)
        assert sorted(p.name for p in (raw_dir / "imagesTs").iterdir()) == [
            f"itk{ending[1:]}_005_0000{ending}", f"itk{ending[1:]}_006_0000{ending}"]
        plans = plan_and_preprocess(spec.dataset_id, verify=True, backbone="vit_tiny", num_processes=1)
        plans.network = plans.network.replace(**SHRINK)
        plans.save(plans_path(spec.folder_name))
        assert train_main([spec.folder_name, "all", "--epochs", "1", "--iterations-per-epoch", "2",
                           "--device", "cpu", "--num-workers", "0"]) == 0
        yield ending, spec.folder_name, raw_dir, root


def assert_same_grid(output, reference):
    out, ref = sitk.ReadImage(str(output)), sitk.ReadImage(str(reference))
    assert out.GetSize() == ref.GetSize()
    assert out.GetOrigin() == ref.GetOrigin()
    assert out.GetSpacing() == ref.GetSpacing()
    np.testing.assert_allclose(out.GetDirection(), ref.GetDirection(), rtol=0, atol=1e-15)


def test_validation_of_fold_all_is_written_in_the_dataset_format(trained):
    ending, dataset, raw_dir, root = trained
    validation = root / "results" / dataset / "nnSAM3DTrainer__nnsam3d_plans" / "fold_all" / "validation"
    written = sorted(validation.glob(f"*{ending}"))
    assert len(written) == 5
    for file in written:
        assert_same_grid(file, raw_dir / "labelsTr" / file.name)


def test_predictions_keep_format_and_grid_and_evaluate(trained, tmp_path):
    ending, dataset, raw_dir, _ = trained
    output = tmp_path / "predictions"
    assert predict_main(["-i", str(raw_dir / "imagesTs"), "-o", str(output), "-d", dataset, "-f", "all",
                         "--no-progress"]) == 0
    directions = set()
    for image_file in sorted((raw_dir / "imagesTs").iterdir()):
        case_id = image_file.name[: -len(f"_0000{ending}")]
        prediction = output / f"{case_id}{ending}"
        assert_same_grid(prediction, image_file)
        labels = sitk.GetArrayFromImage(sitk.ReadImage(str(prediction)))
        assert labels.dtype == np.uint8 and set(np.unique(labels)) <= {0, 1, 2, 3}
        directions.add(tuple(np.round(sitk.ReadImage(str(image_file)).GetDirection(), 3)))
    assert len(directions) == 2  # an oblique and a permuted input

    assert evaluate_main(["-ref", str(raw_dir / "labelsTs"), "-pred", str(output), "-d", dataset]) == 0
    summary = json.loads((output / "summary.json").read_text())
    assert len(summary["per_case"]) == 2 and summary["file_ending"] == ending


def test_output_format_option_writes_another_format_on_the_same_grid(trained, tmp_path):
    ending, dataset, raw_dir, _ = trained
    output = tmp_path / "as_nifti"
    assert predict_main(["-i", str(raw_dir / "imagesTs"), "-o", str(output), "-d", dataset, "-f", "all",
                         "--output-format", ".nii.gz", "--no-progress"]) == 0
    for image_file in sorted((raw_dir / "imagesTs").iterdir()):
        case_id = image_file.name[: -len(f"_0000{ending}")]
        nifti = sitk.ReadImage(str(output / f"{case_id}.nii.gz"))
        source = sitk.ReadImage(str(image_file))
        assert nifti.GetSize() == source.GetSize()
        np.testing.assert_allclose(nifti.GetOrigin(), source.GetOrigin(), atol=1e-4)  # NIfTI stores float32
        np.testing.assert_allclose(nifti.GetDirection(), source.GetDirection(), atol=1e-6)
