"""The integrity check finds every problem of a raw dataset in one pass, each naming its file.

One generated dataset carries one problem per case (plus dataset-level ones); a single run of
the check must report all of them, on the right file, and the command must stop with a
non-zero exit and write nothing.
"""

from __future__ import annotations

import gzip
import re
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from nnsam3d.commands.plan_and_preprocess import main
from nnsam3d.demo.synthetic_dataset import SyntheticDatasetSpec, generate_synthetic_dataset
from nnsam3d.io.atomic import read_json, write_json_atomic
from nnsam3d.planners.integrity import (
    DatasetIntegrityError,
    check_dataset_integrity,
    verify_dataset_integrity,
)

BROKEN = SyntheticDatasetSpec(
    dataset_id=991, name="Broken", num_training=15, num_test=0, shape=(10, 24, 24), orientations=("RAS", "LPS")
)


def case_file(dataset: Path, index: int, channel: int | None = 0, folder: str = "imagesTr") -> Path:
    suffix = "" if channel is None else f"_{channel:04d}"
    return dataset / folder / f"broken_{index:03d}{suffix}.nii.gz"


def label_file(dataset: Path, index: int) -> Path:
    return case_file(dataset, index, None, "labelsTr")


def rewrite(path: Path, change_data=None, change_affine=None, dtype=None) -> None:
    """Rewrite a NIfTI file with its voxels and/or affine changed."""
    image = nib.load(str(path))
    data = np.asarray(image.dataobj)
    affine = image.affine.copy()
    if change_data is not None:
        data = change_data(data)
    if change_affine is not None:
        affine = change_affine(affine)
    nib.save(nib.Nifti1Image(data.astype(dtype or data.dtype), affine), str(path))


def shifted(offset_mm):
    def change(affine):
        affine[:3, 3] += offset_mm
        return affine

    return change


def flipped_first_axis(affine):
    """The same voxels declared in the opposite direction along the file's first axis."""
    affine[:, 0] *= -1
    return affine


PROBLEMS = (
    "undeclared label value", "label shape", "label spacing", "NaN and inf in image", "label affine shifted",
    "label orientation", "empty foreground", "truncated file", "unreadable label", "CT far outside HU",
    "CT normalised", "extra channel file", "4D file holding two channels", "missing label", "non-integer label",
    "label without images", "misnamed image file", "case count",
)


def _break_dataset(dataset: Path) -> dict[str, tuple[Path, str]]:
    """Break one case per problem; problem name → (file it must be reported on, message pattern)."""
    expected = {}

    rewrite(label_file(dataset, 0), lambda d: np.where(d == 1, 7, d))
    expected["undeclared label value"] = (label_file(dataset, 0), r"label value\(s\) \[7\] not declared")

    rewrite(label_file(dataset, 1), lambda d: d[:, :, :-1])
    expected["label shape"] = (label_file(dataset, 1), r"shape .* differs from broken_001_0000")

    def coarser(affine):
        affine[:3, :3] *= 1.5
        return affine

    rewrite(label_file(dataset, 2), change_affine=coarser)
    expected["label spacing"] = (label_file(dataset, 2), r"spacing .* differs from broken_002_0000")

    def with_nan_and_inf(data):
        data = data.astype(np.float32)
        data[0, 0, 0], data[1, 1, 1], data[2, 2, 2] = np.nan, np.nan, np.inf
        return data

    rewrite(case_file(dataset, 3), with_nan_and_inf, dtype=np.float32)
    expected["NaN and inf in image"] = (case_file(dataset, 3), r"2 NaN and 1 infinite voxel")

    rewrite(label_file(dataset, 4), change_affine=shifted([4.0, 0.0, 0.0]))
    expected["label affine shifted"] = (label_file(dataset, 4), r"affine disagrees .* 4\.00 mm")

    rewrite(label_file(dataset, 5), change_affine=flipped_first_axis)
    expected["label orientation"] = (label_file(dataset, 5), r"affine disagrees .*orientation \w{3} vs \w{3}")

    rewrite(label_file(dataset, 6), lambda d: np.zeros_like(d))
    expected["empty foreground"] = (label_file(dataset, 6), r"only background")

    truncated = case_file(dataset, 7)
    truncated.write_bytes(truncated.read_bytes()[: truncated.stat().st_size // 2])
    expected["truncated file"] = (truncated, r"cannot be read as NIfTI")

    garbage = label_file(dataset, 8)
    garbage.write_bytes(gzip.compress(b"this is not an image"))
    expected["unreadable label"] = (garbage, r"cannot be read as NIfTI")

    rewrite(case_file(dataset, 9), lambda d: d.astype(np.float32) * 100, dtype=np.float32)
    expected["CT far outside HU"] = (case_file(dataset, 9), r"far outside the Hounsfield range")

    rewrite(case_file(dataset, 10), lambda d: (d - d.min()) / (d.max() - d.min()), dtype=np.float32)
    expected["CT normalised"] = (case_file(dataset, 10), r"looks normalised or rescaled")

    extra = case_file(dataset, 11, channel=1)
    extra.write_bytes(case_file(dataset, 11).read_bytes())
    expected["extra channel file"] = (
        dataset / "imagesTr" / "broken_011", r"2 channel files but channel_names declares 1"
    )

    rewrite(case_file(dataset, 12), lambda d: np.stack([d, d], axis=-1))
    expected["4D file holding two channels"] = (
        case_file(dataset, 12), r"expected a 3D volume \(one file per channel\)"
    )

    label_file(dataset, 13).unlink()
    expected["missing label"] = (label_file(dataset, 13), r"label file missing")

    def non_integer(data):
        data = data.astype(np.float32)
        data[data == 2] = 1.5
        return data

    rewrite(label_file(dataset, 14), non_integer, dtype=np.float32)
    expected["non-integer label"] = (label_file(dataset, 14), r"non-integer values")

    orphan = label_file(dataset, 99)
    orphan.write_bytes(label_file(dataset, 0).read_bytes())
    expected["label without images"] = (orphan, r"label file without images")

    misnamed = dataset / "imagesTr" / "broken_000.nii.gz"
    misnamed.write_bytes(case_file(dataset, 0).read_bytes())
    expected["misnamed image file"] = (misnamed, r"not named CASE_XXXX\.nii\.gz")

    description = read_json(dataset / "dataset.json")
    description["numTraining"] = 20
    write_json_atomic(dataset / "dataset.json", description)
    expected["case count"] = (dataset / "dataset.json", r"numTraining is 20 but .* holds 15 case\(s\)")
    return expected


@pytest.fixture(scope="module")
def broken_dataset(tmp_path_factory) -> tuple[Path, dict[str, tuple[Path, str]]]:
    raw = tmp_path_factory.mktemp("raw")
    dataset = generate_synthetic_dataset(raw, BROKEN)
    expected = _break_dataset(dataset)
    assert sorted(expected) == sorted(PROBLEMS)
    return dataset, expected


@pytest.fixture(scope="module")
def report(broken_dataset) -> list:
    dataset, _ = broken_dataset
    return verify_dataset_integrity(dataset, num_processes=2)


@pytest.mark.parametrize("name", PROBLEMS)
def test_every_problem_is_reported_on_its_file(broken_dataset, report, name):
    _, expected = broken_dataset
    path, pattern = expected[name]
    on_file = [p.problem for p in report if p.path == path]
    assert any(re.search(pattern, problem) for problem in on_file), (
        f"{name}: expected /{pattern}/ on {path.name}, found {on_file}"
    )


def test_intact_cases_have_no_problem_and_nothing_is_reported_twice(broken_dataset, report):
    dataset, expected = broken_dataset
    reported_paths = {p.path for p in report}
    assert reported_paths == {path for path, _ in expected.values()}, "problems only on the broken files"
    assert len({str(p) for p in report}) == len(report)


def test_clean_dataset_passes(small_ct_dataset, capsys):
    assert verify_dataset_integrity(small_ct_dataset, num_processes=1) == []
    check_dataset_integrity(small_ct_dataset, num_processes=1)
    assert "passed" in capsys.readouterr().out


def test_missing_channel_of_a_multichannel_dataset(nnsam3d_folders):
    spec = SyntheticDatasetSpec(
        dataset_id=992, name="MRI", modality="MRI", num_channels=2, num_training=2, num_test=1, shape=(8, 16, 16)
    )
    dataset = generate_synthetic_dataset(nnsam3d_folders.raw, spec)
    (dataset / "imagesTr" / "mri_001_0001.nii.gz").unlink()
    (dataset / "imagesTs" / "mri_002_0000.nii.gz").unlink()
    problems = [str(p) for p in verify_dataset_integrity(dataset, num_processes=1)]
    assert any(re.search(r"imagesTr/mri_001: missing channel file\(s\) mri_001_0001\.nii\.gz", p) for p in problems)
    assert any(re.search(r"imagesTs/mri_002: missing channel file\(s\) mri_002_0000\.nii\.gz", p) for p in problems)
    # the case cannot be read as a whole, so it is not reported twice (its label is present, not an orphan)
    assert len(problems) == 2, problems


@pytest.mark.parametrize(
    "content, pattern",
    [
        ({"labels": {"background": 0}}, r"missing required key\(s\) channel_names, numTraining, file_ending"),
        (
            {
                "channel_names": {"0": "CT"},
                "labels": {"background": 0, "a": 2},
                "numTraining": 1,
                "file_ending": ".nii.gz",
            },
            r"label values must be consecutive",
        ),
        (
            {"channel_names": {"0": "CT"}, "labels": {"background": 0}, "numTraining": 1, "file_ending": ".tif"},
            r"file_ending '\.tif' is not supported",
        ),
        (
            {"channel_names": ["CT"], "labels": {"background": 0}, "numTraining": 1, "file_ending": ".nii.gz"},
            r"channel_names must be a JSON object",
        ),
        (
            {"channel_names": {"0": "CT"}, "labels": {"background": 0}, "numTraining": "six", "file_ending": ".nii.gz"},
            r"malformed content \(ValueError",
        ),
        ([{"channel_names": {"0": "CT"}}], r"must hold a JSON object"),
    ],
)
def test_dataset_json_problems_name_the_file(small_ct_dataset, content, pattern):
    write_json_atomic(small_ct_dataset / "dataset.json", content)
    problems = verify_dataset_integrity(small_ct_dataset, num_processes=1)
    assert [p.path for p in problems] == [small_ct_dataset / "dataset.json"]
    assert re.search(pattern, problems[0].problem), problems[0].problem


def test_broken_json_is_reported(small_ct_dataset):
    (small_ct_dataset / "dataset.json").write_text('{"labels": ')
    problems = verify_dataset_integrity(small_ct_dataset, num_processes=1)
    assert len(problems) == 1 and "not valid JSON" in problems[0].problem


def test_check_raises_with_every_problem_in_the_message(broken_dataset):
    dataset, expected = broken_dataset
    with pytest.raises(DatasetIntegrityError) as caught:
        check_dataset_integrity(dataset, num_processes=1)
    message = str(caught.value)
    assert len(caught.value.problems) >= len(expected)
    for path, _ in expected.values():
        assert str(path) in message


def test_command_exits_non_zero_names_every_file_and_writes_nothing(
    broken_dataset, nnsam3d_folders, monkeypatch, capsys
):
    dataset, expected = broken_dataset
    monkeypatch.setenv("nnSAM3D_raw", str(dataset.parent))
    assert main(["-d", "991", "--verify_dataset_integrity", "-np", "2"]) == 1
    stderr = capsys.readouterr().err
    assert "Traceback" not in stderr
    lines = stderr.splitlines()
    for name, (path, pattern) in expected.items():
        assert any(str(path) in line and re.search(pattern, line) for line in lines), f"{name} not reported"
    assert "Nothing was written" in stderr
    assert list(nnsam3d_folders.preprocessed.iterdir()) == []
