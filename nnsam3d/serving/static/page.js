// The nnsam3d annotation page: NiiVue shows the image and the segmentation in three planes; a
// click asks the server (MONAI Label protocol, POST /infer/nnsam3d_interactive) for the label map
// with every point placed so far; Save stores it (PUT /datastore/label, tag final).
// A token, when the server needs one, comes in the address: http://HOST:PORT/#token=TOKEN.
"use strict";

const token = new URLSearchParams(location.hash.slice(1)).get("token");
const headers = token ? { Authorization: `Bearer ${token}` } : {};
const $ = (id) => document.getElementById(id);
const page = { ready: false, busy: false, error: null, version: 0, foreground: 0, saved: 0 };
window.nnsam3d = page;  // read by the browser test
page.fileVoxel = (mm) => fileVoxel(mm);
page.canvasPointOf = (mm) => {  // CSS pixel offset in the canvas where the axial tile shows mm
  const position = nv.frac2canvasPos(nv.mm2frac(mm));
  const rect = $("gl").getBoundingClientRect();
  return position ? [position[0] * rect.width / $("gl").width, position[1] * rect.height / $("gl").height] : null;
};

let nv, info, imageId, overlay = null, labelsBlob = null;
let extensions = {};  // image id -> file ending, so that NiiVue picks its reader
let points = {};   // class name -> {foreground: [[i,j,k]...], background: [...]}
let history = [];  // [{label, kind}] in click order, for undo
let pointer = null;

function status(text, isError = false) {
  $("status").textContent = text;
  $("status").className = isError ? "error" : "";
  page.error = isError ? text : null;
}

async function call(method, path, body) {
  const response = await fetch(path, { method, headers, body });
  if (!response.ok) {
    let detail = response.statusText;
    try { detail = (await response.json()).detail; } catch (e) { /* not JSON */ }
    throw new Error(`${response.status}: ${typeof detail === "string" ? detail : JSON.stringify(detail)}`);
  }
  return response;
}

async function showLabels(blob) {
  labelsBlob = blob;
  if (overlay) nv.removeVolume(overlay);
  const url = URL.createObjectURL(blob);
  overlay = await niivue.NVImage.loadFromUrl({ url, name: "labels.nii.gz", colormap: "warm",
    cal_min: 0.5, cal_max: Math.max(1, Object.keys(info.labels).length - 1), opacity: 0.5 });
  URL.revokeObjectURL(url);
  nv.addVolume(overlay);
  page.foreground = overlay.img.reduce((count, value) => count + (value > 0 ? 1 : 0), 0);
  page.version += 1;
}

async function infer(model, params) {
  const form = new FormData();
  form.append("params", JSON.stringify(params));
  const response = await call("POST", `infer/${model}?image=${encodeURIComponent(imageId)}&output=image`, form);
  await showLabels(await response.blob());
}

async function openImage(id) {
  page.ready = false;
  imageId = id;
  points = {};
  history = [];
  overlay = null;
  status(`segmenting ${id}…`);
  await nv.loadVolumes([{ url: `datastore/image?image=${encodeURIComponent(id)}`, name: `${id}${extensions[id]}`, headers }]);
  await infer("nnsam3d", {});
  status(`${id}: automatic segmentation; click to correct`);
  page.ready = true;
}

// World point (mm, RAS) -> voxel (i, j, k) in the image file's own order, as MONAI Label's
// clients send points: through the inverse of the file's affine (NiiVue's own voxel indices are
// those of its RAS-reoriented copy).
function fileVoxel(mm) {
  const a = nv.volumes[0].hdr.affine;
  const m = [[a[0][0], a[0][1], a[0][2]], [a[1][0], a[1][1], a[1][2]], [a[2][0], a[2][1], a[2][2]]];
  const b = [mm[0] - a[0][3], mm[1] - a[1][3], mm[2] - a[2][3]];
  const det = (q) => q[0][0] * (q[1][1] * q[2][2] - q[1][2] * q[2][1]) - q[0][1] * (q[1][0] * q[2][2] - q[1][2] * q[2][0])
    + q[0][2] * (q[1][0] * q[2][1] - q[1][1] * q[2][0]);
  const d = det(m);
  return [0, 1, 2].map((col) => Math.round(det(m.map((row, r) => row.map((v, c) => (c === col ? b[r] : v)))) / d));
}

function currentRequest(label) {
  const own = points[label] || { foreground: [], background: [] };
  return { label, foreground: own.foreground, background: own.background };
}

async function click(vox, positive) {
  if (page.busy || !page.ready) return;
  const label = $("label").value;
  const kind = positive ? "foreground" : "background";
  points[label] = points[label] || { foreground: [], background: [] };
  points[label][kind].push(vox);
  history.push({ label, kind });
  page.busy = true;
  status(`${positive ? "adding" : "removing"} ${label} at [${vox}]…`);
  const started = performance.now();
  try {
    await infer("nnsam3d_interactive", currentRequest(label));
    status(`${history.length} click(s); last in ${((performance.now() - started) / 1000).toFixed(2)} s`);
  } catch (error) {
    points[label][kind].pop();
    history.pop();
    status(error.message, true);
  } finally {
    page.busy = false;
  }
}

async function undo() {
  if (!history.length || page.busy) return;
  const { label, kind } = history.pop();
  points[label][kind].pop();
  page.busy = true;
  try {
    await infer("nnsam3d_interactive", currentRequest(label));
    status(`undone; ${history.length} click(s)`);
  } catch (error) {
    status(error.message, true);
  } finally {
    page.busy = false;
  }
}

async function save() {
  if (!labelsBlob) return;
  const form = new FormData();
  form.append("params", JSON.stringify({ source: "nnsam3d page", clicks: history.length }));
  form.append("label", labelsBlob, `${imageId}.nii.gz`);
  try {
    await call("PUT", `datastore/label?image=${encodeURIComponent(imageId)}&tag=final`, form);
    page.saved += 1;
    status(`saved the label of ${imageId}`);
  } catch (error) {
    status(error.message, true);
  }
}

async function start() {
  nv = new niivue.Niivue({ backColor: [0, 0, 0, 1], crosshairWidth: 1, crosshairColor: [0.2, 1, 0.2, 0.7] });
  await nv.attachTo("gl");
  nv.setInterpolation(true);  // nearest neighbour: voxels as they are
  nv.setSliceType(nv.sliceTypeMultiplanar);
  const canvas = $("gl");
  canvas.addEventListener("contextmenu", (event) => event.preventDefault());
  // The pointer's button and modifiers, read before NiiVue moves the crosshair to the point.
  canvas.addEventListener("pointerdown", (event) => {
    pointer = { x: event.clientX, y: event.clientY, positive: event.button === 0 && !event.shiftKey && !event.altKey };
  }, true);
  canvas.addEventListener("pointerup", (event) => {
    if (!pointer || Math.hypot(event.clientX - pointer.x, event.clientY - pointer.y) > 4) { pointer = null; return; }
    const rect = canvas.getBoundingClientRect();
    const scale = canvas.width / rect.width;
    const frac = nv.canvasPos2frac([(event.clientX - rect.left) * scale, (event.clientY - rect.top) * scale]);
    const positive = pointer.positive;
    pointer = null;
    if (!frac || frac[0] < 0 || !nv.volumes.length) return;
    click(fileVoxel(nv.frac2mm(frac)), positive);
  });
  $("undo").onclick = undo;
  $("save").onclick = save;
  try {
    info = await (await call("GET", "info/")).json();
    for (const [name, value] of Object.entries(info.labels ? info.models.nnsam3d.labels : {})) {
      if (value > 0) $("label").add(new Option(name, name));
    }
    const index = await (await call("GET", "datastore/?output=all")).json();
    const ids = Object.keys(index.objects);
    for (const id of ids) extensions[id] = index.objects[id].image.ext;
    for (const id of ids) $("image").add(new Option(id, id));
    $("image").onchange = () => openImage($("image").value).catch((error) => status(error.message, true));
    const wanted = new URLSearchParams(location.search).get("image");
    if (wanted && ids.includes(wanted)) $("image").value = wanted;
    if (ids.length) await openImage($("image").value);
    else status("the datastore holds no image yet: upload one (Slicer's Upload Volume, or PUT /datastore/image)");
  } catch (error) {
    status(error.message, true);
  }
}

start();
