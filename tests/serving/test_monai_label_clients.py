"""MONAI Label's own clients against the server on 127.0.0.1: its Python client and the client of
its 3D Slicer extension (both taken from the monailabel 0.8.5 wheel, ``conftest.py``) upload an
image, segment it, click, save the corrected label and download it, as Slicer does."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from nnsam3d.io.image_io import read_volume_in_file_order

LIVER = 1


def _read(path):
    return read_volume_in_file_order(path)


def _assert_on_the_image_grid(label_file, image_file):
    labels, geometry = _read(label_file)
    _, image_geometry = _read(image_file)
    assert geometry.shape == image_geometry.shape
    assert np.allclose(geometry.affine_array, image_geometry.affine_array, atol=1e-4)
    return labels


def test_python_client_segments_clicks_saves_and_downloads(monai_label_clients, start_server, phantom_file, voxels,
                                                           tmp_path):
    python_client, _ = monai_label_clients
    url, datastore = start_server()
    client = python_client.MONAILabelClient(url, tmpdir=str(tmp_path))
    info = client.info()
    assert info["models"]["nnsam3d"]["type"] == "segmentation"
    assert info["models"]["nnsam3d_interactive"]["type"] == "deepedit"
    assert info["models"]["nnsam3d_interactive"]["labels"] == {"background": 0, "liver": 1, "lesion": 2}
    assert info["labels"] == ["background", "liver", "lesion"]

    assert client.upload_image(str(phantom_file), image_id="case_1") == {"image": "case_1"}
    automatic_file, params = client.infer("nnsam3d", "case_1", {})
    automatic = _assert_on_the_image_grid(automatic_file, phantom_file)
    assert params["label_names"]["liver"] == LIVER
    assert automatic[voxels["bright"]] == LIVER and automatic[voxels["missed"]] == 0

    # A positive click inside the missed block labels it; the next request carries both points
    # (MONAI Label's requests are stateless) and runs only the new, negative click.
    positive = {"label": "liver", "foreground": [list(voxels["missed"])], "background": []}
    clicked_file, params = client.infer("nnsam3d_interactive", "case_1", positive)
    clicked = _assert_on_the_image_grid(clicked_file, phantom_file)
    assert clicked[voxels["missed"]] == LIVER and params["clicks_run"] == 1
    assert (clicked[28:31, 25, 7] == LIVER).all()
    both = {**positive, "background": [list(voxels["bright"])]}
    corrected_file, params = client.infer("nnsam3d_interactive", "case_1", both)
    corrected = _assert_on_the_image_grid(corrected_file, phantom_file)
    assert params["clicks_run"] == 1
    assert corrected[voxels["bright"]] == 0 and corrected[voxels["missed"]] == LIVER
    # Taking the positive point away resets the class and replays the negative one alone.
    undone_file, params = client.infer("nnsam3d_interactive", "case_1",
                                       {"label": "liver", "foreground": [], "background": [list(voxels["bright"])]})
    undone = _read(undone_file)[0]
    assert undone[voxels["missed"]] == 0 and undone[voxels["bright"]] == 0 and params["clicks_run"] == 1

    saved = client.save_label("case_1", corrected_file, tag="final")
    assert saved["image"] == "case_1" and saved["label"] == "case_1"
    listing = client.datastore()
    assert "final" in listing["objects"]["case_1"]["labels"]
    downloaded = client.download_label("case_1", "final")
    assert np.array_equal(_assert_on_the_image_grid(downloaded, phantom_file), corrected)
    saved_file = datastore.label_path("case_1", "final")
    assert np.array_equal(_read(saved_file)[0], corrected)


def test_slicer_extension_client_speaks_deepedit_multi_label_with_nrrd(monai_label_clients, start_server,
                                                                       phantom_file, voxels, tmp_path):
    _, slicer_client = monai_label_clients
    url, _ = start_server()
    client = slicer_client.MONAILabelClient(url, tmpdir=str(tmp_path))
    info = client.info()
    model = [name for name, model in info["models"].items() if model["type"] in ("deepgrow", "deepedit")][0]
    # Slicer writes its volume node to a file of its file extension and uploads it.
    nrrd_image = tmp_path / "volume.nrrd"
    sitk.WriteImage(sitk.ReadImage(str(phantom_file)), str(nrrd_image))
    assert client.upload_image(str(nrrd_image), "case_2") == {"image": "case_2"}
    # What MONAILabel.py's onClickDeepgrow sends for a DeepEdit model with labels: every
    # segment's points under its name, then logic.infer adds the result format.
    params = {name: [] for name in info["labels"]}
    params.update({"liver": [list(voxels["missed"])], "label": "liver",
                   "result_extension": ".nrrd", "result_dtype": "uint8"})
    result_file, answer = client.infer(model, "case_2", params)
    assert result_file.endswith(".nrrd")
    result = _assert_on_the_image_grid(result_file, nrrd_image)
    assert sitk.ReadImage(result_file).GetPixelID() == sitk.sitkUInt8
    assert result[voxels["missed"]] == LIVER and result[voxels["bright"]] == LIVER
    names = [k for k, _ in sorted(answer["label_names"].items(), key=lambda item: item[1])]
    assert names == ["background", "liver", "lesion"]
    # A point of the "background" segment while editing it: a negative click of the class there.
    params.update({"background": [list(voxels["bright"])], "label": "background"})
    result_file, answer = client.infer(model, "case_2", params)
    result = _read(result_file)[0]
    assert result[voxels["bright"]] == 0 and result[voxels["missed"]] == LIVER and answer["clicks_run"] == 1

    saved = client.save_label("case_2", result_file, params={"label_info": [{"name": "liver", "idx": 1}]})
    assert saved["label"] == "case_2"
    listing = client.datastore()
    assert listing["objects"]["case_2"]["labels"]["final"]["info"]["params"]["label_info"][0]["name"] == "liver"
    assert np.array_equal(_read(client.download_label("case_2", "final"))[0], result)


def test_a_token_is_required_when_set_and_the_clients_send_it(monai_label_clients, start_server, phantom_file,
                                                              tmp_path):
    python_client, slicer_client = monai_label_clients
    url, _ = start_server(token="s3cret-token")
    client = python_client.MONAILabelClient(url, tmpdir=str(tmp_path))
    assert client.auth_enabled()
    with pytest.raises(python_client.MONAILabelClientException) as refused:
        client.info()
    assert "401" in refused.value.msg and "token" in refused.value.msg
    with pytest.raises(python_client.MONAILabelClientException):
        client.auth_token("annotator", "wrong")
    # Slicer's extension asks for a user name and password: the token is the password.
    slicer = slicer_client.MONAILabelClient(url, tmpdir=str(tmp_path))
    assert not slicer.auth_valid_token()
    slicer.update_auth(slicer.auth_token("annotator", "s3cret-token"))
    assert slicer.auth_valid_token()
    assert "nnsam3d" in slicer.info()["models"]
    assert slicer.upload_image(str(phantom_file), "case_3") == {"image": "case_3"}
