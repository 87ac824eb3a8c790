"""``nnsam3d_report``: the cohort page's numbers and flags from known predictions, the page in
headless Chromium (rows, sorting by a header click, the larger view, a screenshot), and the
training page of a results folder."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage

from nnsam3d.commands.report import main as report_main
from nnsam3d.demo.synthetic_dataset import SyntheticDatasetSpec, generate_synthetic_dataset
from nnsam3d.io.raw_dataset import DatasetDescription
from nnsam3d.schemas.fingerprint import FINGERPRINT_FILENAME, ClassStatistics, DatasetFingerprint

CHROMIUM = next((shutil.which(name) for name in ("chromium", "chromium-browser", "google-chrome") if shutil.which(name)),
                None)


class TableParser(HTMLParser):
    """Rows of ``#cases``: row id → {column key: (text, data-value)}, in document order; the
    headers' aria-sort; whether the detail view is shown and how many pictures it holds."""

    def __init__(self):
        super().__init__()
        self.keys, self.rows, self.order, self.sorted_by = [], {}, [], {}
        self.detail_shown, self.detail_images = False, 0
        self._row = self._cell = None
        self._column = 0
        self._in_detail = self._in_template = False

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "th" and "data-key" in attrs:
            self.keys.append(attrs["data-key"])
            if attrs.get("aria-sort"):
                self.sorted_by[attrs["data-key"]] = attrs["aria-sort"]
        elif tag == "template":
            self._in_template = True
        elif tag == "tr" and "data-id" in attrs:
            self._row, self._column = attrs["data-id"], 0
            self.rows[self._row] = {}
            self.order.append(self._row)
        elif tag == "td" and self._row is not None and not self._in_template:
            self._cell = [self.keys[self._column], "", attrs.get("data-value")]
        elif tag == "div" and attrs.get("id") == "detail":
            self._in_detail, self.detail_shown = True, "hidden" not in attrs
        elif tag == "img" and self._in_detail:
            self.detail_images += 1

    def handle_endtag(self, tag):
        if tag == "td" and self._cell is not None:
            key, text, value = self._cell
            self.rows[self._row][key] = (text.strip(), value)
            self._cell, self._column = None, self._column + 1
        elif tag == "template":
            self._in_template = False
        elif tag == "tr":
            self._row = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell[1] += data


def parse(html_text: str) -> TableParser:
    parser = TableParser()
    parser.feed(html_text)
    return parser


def file_order_labels(path: Path):
    image = nib.load(str(path))
    return np.asarray(image.dataobj).astype(np.int16), image.affine


def save_like(labels: np.ndarray, affine: np.ndarray, path: Path) -> None:
    nib.save(nib.Nifti1Image(labels.astype(np.int16), affine), str(path))


@pytest.fixture(scope="module")
def cohort(tmp_path_factory, point_folders):
    """Raw dataset with 4 test cases; predictions = the references with known defects:
    case 0 exact, case 1 without the lesion, case 2 with a detached liver piece, case 3 with a
    kidney grown far beyond the training sizes; a fingerprint of the training labels."""
    root = tmp_path_factory.mktemp("report")
    with pytest.MonkeyPatch.context() as patch:
        point_folders(root, patch)
        spec = SyntheticDatasetSpec(num_training=3, num_test=4, shape=(12, 40, 40))
        raw_dir = generate_synthetic_dataset(root / "raw", spec)
        description = DatasetDescription.from_file(raw_dir / "dataset.json")
        labels = {name: value for name, value in description.labels.items() if value}

        volumes = {value: [] for value in labels.values()}
        for label_file in sorted((raw_dir / "labelsTr").iterdir()):
            data, affine = file_order_labels(label_file)
            for value in volumes:
                volumes[value].append(float((data == value).sum() * abs(np.linalg.det(affine[:3, :3]))))
        fingerprint = DatasetFingerprint(
            spec.folder_name, ["a", "b", "c"], [(3.0, 1.0, 1.0)] * 3, [(12, 40, 40)] * 3, [(12, 40, 40)] * 3, {"0": "CT"}, {},
            {str(v): ClassStatistics(v, n, [int(x) for x in volumes[v]], volumes[v], 3) for n, v in labels.items()})
        fingerprint.save(root / "preprocessed" / spec.folder_name / FINGERPRINT_FILENAME)

        predictions = root / "predictions"
        predictions.mkdir()
        case_ids, expected = [], {}
        for index, reference in enumerate(sorted((raw_dir / "labelsTs").iterdir())):
            case_id = reference.name[: -len(".nii.gz")]
            data, affine = file_order_labels(reference)
            if index == 1:
                data[data == labels["lesion"]] = labels["liver"]
            elif index == 2:
                data[:4, :4, :4] = labels["liver"]  # a corner piece far from the body's organs
                assert data[:4, :4, :4].size >= 0.05 * (data == labels["liver"]).sum()
            elif index == 3:
                data[ndimage.binary_dilation(data == labels["kidney"], iterations=6) & (data == 0)] = labels["kidney"]
            save_like(data, affine, predictions / reference.name)
            voxel_ml = abs(np.linalg.det(affine[:3, :3])) / 1000
            expected[case_id] = {name: (data == value).sum() * voxel_ml for name, value in labels.items()}
            case_ids.append(case_id)
        output = root / "report"
        assert report_main(["-i", str(raw_dir / "imagesTs"), "-p", str(predictions), "-ref", str(raw_dir / "labelsTs"),
                            "-d", str(spec.dataset_id), "-o", str(output), "-np", "1"]) == 0
        yield {"page": output / "index.html", "case_ids": case_ids, "expected": expected, "labels": labels,
               "max_kidney_ml": max(volumes[labels["kidney"]]) / 1000}


def test_the_cohort_page_has_a_row_per_case_with_volumes_metrics_and_flags(cohort):
    text = cohort["page"].read_text()
    assert not re.search(r'(src|href)="(https?:)?//', text), "the page must not load anything from outside"
    page = parse(text)
    assert page.order == cohort["case_ids"]
    for case_id, volumes in cohort["expected"].items():
        for name, volume in volumes.items():
            assert float(page.rows[case_id][f"{name}_ml"][1]) == pytest.approx(volume, rel=1e-6)
    first, no_lesion, pieces, big_kidney = (page.rows[c] for c in cohort["case_ids"])
    assert first["flags"] == ("", "0.0") and float(first["mean_dice"][1]) == 1.0
    assert no_lesion["flags"][0] == "lesion missing" and float(no_lesion["lesion_dice"][1]) == 0.0
    assert "liver in 2 pieces" in pieces["flags"][0] and pieces["liver_pieces"][1] == "2.0"
    assert "kidney volume" in big_kidney["flags"][0] and "outside training" in big_kidney["flags"][0]
    assert float(big_kidney["kidney_ml"][1]) > 2 * cohort["max_kidney_ml"]
    assert float(big_kidney["kidney_dice"][1]) < 1.0
    assert text.count("data:image/jpeg;base64,") == 3 + 2 + 3 + 3  # one picture per predicted class


@pytest.mark.skipif(CHROMIUM is None, reason="headless Chromium not installed (Debian: apt-get install chromium)")
def test_the_page_sorts_and_opens_a_case_in_headless_chromium(cohort, tmp_path):
    url = cohort["page"].resolve().as_uri()
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--allow-file-access-from-files",
             "--virtual-time-budget=5000", f"--user-data-dir={tmp_path / 'profile'}"]

    def dom(fragment: str) -> TableParser:
        result = subprocess.run([CHROMIUM, *flags, "--dump-dom", f"{url}#{fragment}"], capture_output=True,
                                text=True, timeout=120)
        assert result.returncode == 0, result.stderr[-2000:]
        assert 'data-ready="true"' in result.stdout, "the page's script did not run to its end"
        return parse(result.stdout)

    # One click on the header (applied from the fragment through the header's click handler)
    # sorts ascending, a second descending.
    volumes = {c: v["liver"] for c, v in cohort["expected"].items()}
    ascending = dom("sort=liver_ml:asc")
    assert ascending.order == sorted(volumes, key=volumes.get)
    assert ascending.sorted_by == {"liver_ml": "ascending"}
    descending = dom("sort=flags:desc&case=" + cohort["case_ids"][2])
    flag_counts = [float(descending.rows[c]["flags"][1]) for c in descending.order]
    assert flag_counts == sorted(flag_counts, reverse=True) and flag_counts[0] >= 1
    assert descending.sorted_by == {"flags": "descending"}
    assert descending.detail_shown and descending.detail_images == 3
    unsorted = dom("")
    assert unsorted.order == cohort["case_ids"] and not unsorted.detail_shown and not unsorted.sorted_by

    screenshot = tmp_path / "report.png"
    result = subprocess.run([CHROMIUM, *flags, "--window-size=1400,900", f"--screenshot={screenshot}",
                             f"{url}#sort=kidney_ml:desc"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and screenshot.stat().st_size > 20_000, result.stderr[-2000:]
    if os.environ.get("NNSAM3D_KEEP_SCREENSHOT"):  # to look at it: NNSAM3D_KEEP_SCREENSHOT=/some/file.png
        shutil.copy(screenshot, os.environ["NNSAM3D_KEEP_SCREENSHOT"])


def test_the_training_page_shows_every_folds_curves_and_the_cross_validation(tmp_path, capsys):
    model = tmp_path / "Dataset990_X" / "nnSAM3DTrainer__nnsam3d_plans"
    from nnsam3d.evaluation.evaluate_folder import summarize_cases

    labels = {"liver": 1, "kidney": 2}
    for fold, dices in (("0", (0.9, 0.7)), ("1", (0.8, None)), ("all", (1.0, 1.0))):
        per_case = [{"metrics": {name: {"Dice": d, "IoU": d, "NSD": d, "HD95_mm": 1.0}
                                 for name, d in zip(labels, dices)}}]
        means, foreground = summarize_cases(per_case, labels)
        folder = model / f"fold_{fold}"
        (folder / "validation").mkdir(parents=True)
        import json

        (folder / "validation" / "summary.json").write_text(json.dumps(
            {"mean": means, "foreground_mean": foreground, "per_case": per_case}))
        (folder / "progress.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(fold, "ascii") * 10)
    (model / "fold_2").mkdir()
    assert report_main([str(model.parent), "-o", str(tmp_path / "out")]) == 0
    text = (tmp_path / "out" / "index.html").read_text()
    assert text.count("data:image/png;base64,") == 3 and "fold_2: no progress.png yet" in text
    rows = re.findall(r"<tr>(.*?)</tr>", text)
    cells = [re.findall(r"<td[^>]*>(.*?)</td>", row) for row in rows]
    assert ["fold_0", "1", "0.9000", "0.7000", "0.8000"] in cells
    assert ["fold_1", "1", "0.8000", "-", "0.8000"] in cells
    assert ["fold_all (its training cases)", "1", "1.0000", "1.0000", "1.0000"] in cells
    assert ["mean over folds", "", "0.8500", "0.7000", "0.8000"] in cells  # without fold_all's training cases
    assert report_main([str(tmp_path / "nowhere"), "-o", str(tmp_path / "out2")]) == 1
    assert "results folder not found" in capsys.readouterr().err
