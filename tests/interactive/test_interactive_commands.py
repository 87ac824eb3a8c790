"""nnsam3d_refine and nnsam3d_evaluate_interactive on a model folder of a random-weight interactive
network (its prompt branch randomised so that clicks act): files, geometry, refused clicks, curves."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np
import pytest

from nnsam3d.commands.evaluate_interactive import main as evaluate_interactive_main
from nnsam3d.commands.refine import main as refine_main
from nnsam3d.evaluation.metrics import dice
from nnsam3d.inference.predictor import Predictor
from nnsam3d.interactive.session import open_session
from nnsam3d.interactive.simulated_user import error_click
from nnsam3d.io.geometry import to_canonical
from nnsam3d.io.image_io import read_volume_in_file_order, write_segmentation
from tests.interactive_stand_ins import write_random_interactive_model

@pytest.fixture(scope="module")
def interactive_model(tmp_path_factory, point_folders, make_plans):
    root = tmp_path_factory.mktemp("interactive_model")
    with pytest.MonkeyPatch.context() as patch:
        point_folders(root, patch)
        yield write_random_interactive_model(root, make_plans)


def _case(raw_dir: Path):
    image_file = sorted((raw_dir / "imagesTs").glob("*_0000.nii.gz"))[0]
    image, geometry = read_volume_in_file_order(image_file)
    return image_file, image, geometry


def _tile_reach_mm(plans, geometry) -> np.ndarray:
    """How far (mm, per canonical axis) from a click a voxel of a tile containing it can lie."""
    return np.array(plans.patch_size) * np.array(plans.target_spacing) + np.array(geometry.spacing)


def _offsets_mm(voxels: np.ndarray, point_mm, geometry) -> np.ndarray:
    """|canonical voxel - the click| in mm per axis, for voxels (N, 3) in canonical (z, y, x) order."""
    click = (np.linalg.inv(geometry.canonical_affine) @ [*point_mm, 1.0])[:3]
    return np.abs(voxels - click) * np.array(geometry.spacing)


def assert_changed_only_near(before: np.ndarray, after: np.ndarray, point_mm, geometry, plans) -> None:
    """The click changed the segmentation (canonical arrays), and only within the tiles around it."""
    changed = np.argwhere(before != after)
    assert len(changed), "the click changed nothing"
    assert (_offsets_mm(changed, point_mm, geometry) <= _tile_reach_mm(plans, geometry)).all()


def test_refine_applies_clicks_and_keeps_the_rest_of_the_initial_segmentation(interactive_model, tmp_path, capsys):
    dataset, raw_dir, model_dir = interactive_model
    image_file, image, geometry = _case(raw_dir)
    initial = np.zeros(image.shape, dtype=np.int16)
    initial[2:6, 2:6, 1:3] = 3                                      # a hand-made segmentation to refine
    initial_file = tmp_path / "initial.nii.gz"
    write_segmentation(to_canonical(initial, geometry.affine_array), geometry, initial_file)
    # Near a corner, so that most of the image lies beyond the tiles a click re-predicts.
    corner = np.array(image.shape) - 3
    point_mm = (geometry.affine_array @ [*corner, 1.0])[:3].tolist()
    clicks = tmp_path / "clicks.json"
    clicks.write_text(json.dumps([{"label": "liver", "point_mm": point_mm, "positive": True},
                                  {"label": "kidney", "point_mm": point_mm, "positive": False}]))
    output = tmp_path / "refined.nii.gz"
    code = refine_main(["-i", str(image_file), "-s", str(initial_file), "-c", str(clicks), "-o", str(output),
                        "-d", dataset, "--disable-tta", "--device", "cpu"])
    assert code == 0, capsys.readouterr().err
    refined, refined_geometry = read_volume_in_file_order(output)
    assert refined_geometry.shape == geometry.shape and np.allclose(refined_geometry.affine_array, geometry.affine_array)
    assert "2 click(s) applied" in capsys.readouterr().err
    # Without clicks the command writes the initial segmentation; the clicks changed it near them only.
    canonical_refined, canonical_initial = (to_canonical(a, geometry.affine_array) for a in (refined, initial))
    predictor = Predictor.from_model_folder(model_dir, device="cpu", use_mirroring=False)
    assert_changed_only_near(canonical_initial, canonical_refined, point_mm, geometry, predictor.plans)
    everywhere = np.argwhere(np.ones(canonical_initial.shape, dtype=bool))
    out_of_reach = (_offsets_mm(everywhere, point_mm, geometry) > _tile_reach_mm(predictor.plans, geometry)).any(axis=1)
    assert out_of_reach.sum() > canonical_initial.size // 10         # so that "near only" can fail
    # The command is the Python API: the same session, the same clicks, the same label map.
    session = open_session(predictor, image, geometry.affine_array, initial)
    exported_before = session._exported.copy()
    session.click(point_mm, positive=True, label="liver")
    expected = session.click(point_mm, positive=False, label="kidney")
    assert np.array_equal(refined, expected)
    # Voxels whose exported label no click changed keep the initial segmentation's value, even
    # where the model would disagree with it (the hand-made block is kept unless clicked away).
    untouched = session._exported == exported_before
    assert untouched.any() and np.array_equal(canonical_refined[untouched], canonical_initial[untouched])
    assert np.array_equal(canonical_refined[~untouched], session._exported[~untouched])


@pytest.mark.parametrize("entry, expected", [
    ({"label": "liver", "point_mm": [1e4, 0, 0], "positive": True}, "click 1: click at .* lies outside the image"),
    ({"label": "spleen", "point_mm": [0, 0, 0], "positive": True}, "click 1: unknown label 'spleen'"),
    ({"label": "liver", "point_mm": [0, 0], "positive": True}, "click 1: point_mm must be three numbers"),
    ({"label": "liver", "point_mm": [0, 0, 0], "positive": "yes"}, "click 1: positive must be true or false"),
])
def test_refine_refuses_bad_clicks_and_writes_nothing(interactive_model, tmp_path, capsys, entry, expected):
    dataset, raw_dir, _ = interactive_model
    image_file, image, geometry = _case(raw_dir)
    centre_mm = (geometry.affine_array @ [*(np.array(image.shape) // 2), 1.0])[:3].tolist()
    clicks = tmp_path / "clicks.json"
    clicks.write_text(json.dumps([{"label": "liver", "point_mm": centre_mm, "positive": True}, entry]))
    output = tmp_path / "refined.nii.gz"
    code = refine_main(["-i", str(image_file), "-c", str(clicks), "-o", str(output), "-d", dataset,
                        "--disable-tta", "--device", "cpu"])
    error = capsys.readouterr().err
    assert code == 1 and not output.exists()
    assert "nnsam3d_refine: error:" in error and str(clicks) in error
    assert re.search(expected, error), error


def test_evaluate_interactive_writes_the_curve_of_the_clicks_it_applies(interactive_model, tmp_path, capsys):
    dataset, raw_dir, model_dir = interactive_model
    code = evaluate_interactive_main(["-d", dataset, "-i", str(raw_dir / "imagesTs"), "-ref", str(raw_dir / "labelsTs"),
                                      "--clicks", "1", "-o", str(tmp_path), "--disable-tta", "--device", "cpu"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    summary = json.loads((tmp_path / "interactive_summary.json").read_text())
    assert (tmp_path / "interactive_curve.png").read_bytes()[:4] == b"\x89PNG"
    assert summary["clicks"] == [0, 1] and len(summary["per_case"]) == 2
    assert summary["seconds_per_click"]["count"] > 0
    assert "0 clicks" in captured.out and "seconds per click" in captured.out
    # Dice at 0 clicks is the automatic prediction's, computed here independently.
    predictor = Predictor.from_model_folder(model_dir, device="cpu", use_mirroring=False)
    case = summary["per_case"][0]
    image, geometry = read_volume_in_file_order(raw_dir / "imagesTs" / f"{case['case_id']}_0000.nii.gz")
    reference, _ = read_volume_in_file_order(raw_dir / "labelsTs" / f"{case['case_id']}.nii.gz")
    automatic = predictor.predict_volume(image, geometry.affine_array)
    for name, value in predictor.description.labels.items():
        if value:
            expected = dice(reference == value, automatic == value)
            got = case["dice"][name]["0"]
            assert (got is None and np.isnan(expected)) or got == pytest.approx(expected, abs=1e-9)
    # Dice after 1 click is that of the simulated user's click replayed here on a session of its
    # own; the click changed the segmentation, near it only, and for some class that moved the Dice.
    session = open_session(predictor, image, geometry.affine_array)
    canonical_reference = to_canonical(reference, geometry.affine_array)
    moved = []
    for name, value in predictor.description.labels.items():
        if not value:
            continue
        before = session.canonical_labels.copy()
        click = error_click(before, canonical_reference, value, geometry.spacing)
        point_mm = (geometry.canonical_affine @ [*click.position, 1.0])[:3]
        session.click(point_mm, positive=click.positive, label=value)
        assert_changed_only_near(before, session.canonical_labels, point_mm, geometry, predictor.plans)
        after = dice(canonical_reference == value, session.canonical_labels == value)
        reported = [math.nan if v is None else v for v in (case["dice"][name]["0"], case["dice"][name]["1"])]
        assert reported[1] == pytest.approx(after, abs=1e-9, nan_ok=True)
        moved.append(abs(reported[1] - reported[0]) > 1e-6)
        session.reset(value)
    assert any(moved)


def test_evaluate_interactive_names_missing_references(interactive_model, tmp_path, capsys):
    dataset, raw_dir, _ = interactive_model
    code = evaluate_interactive_main(["-d", dataset, "-i", str(raw_dir / "imagesTs"), "-ref", str(tmp_path),
                                      "--clicks", "1", "--device", "cpu"])
    assert code == 1 and "reference label maps missing" in capsys.readouterr().err

