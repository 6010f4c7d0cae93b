// The upload page: files in (tus, over /uploads/), the stored objects out.
//
// Query parameters, for slow links and for tests: `chunk` (bytes per PATCH, default 8 MiB)
// and `rate` (bytes per second at most, default no limit).
import { HttpError, PausedError, Upload, forgetUpload, unfinishedUploads } from "./tus.js";

const MIB = 1024 * 1024;
const params = new URLSearchParams(location.search);
const CHUNK_SIZE = Number(params.get("chunk")) || 8 * MIB;
const RATE = Number(params.get("rate")) || 0;
const AT_ONCE = 3; // uploads running at the same time; the others wait their turn
const base = new URL(".", location.href); // the page may live under a proxy's path prefix
const $ = (selector, root = document) => root.querySelector(selector);

// --- the token -------------------------------------------------------------------------
// Kept in sessionStorage: it survives reloads (so uploads resume) but not the closing of
// the tab, so a shared computer does not keep it. "Remember" puts it in localStorage.
const TOKEN = "gateway-token";
const savedToken = () => sessionStorage.getItem(TOKEN) || localStorage.getItem(TOKEN);
const authHeaders = () => (savedToken() ? { Authorization: `Bearer ${savedToken()}` } : {});

function askForToken(problem) {
  $("#token-form").hidden = false;
  $("#token-problem").hidden = !problem;
  $("#token-problem").textContent = problem || "";
  $("#token").focus();
}

$("#token-form").addEventListener("submit", (event) => {
  event.preventDefault();
  const store = $("#remember-token").checked ? localStorage : sessionStorage;
  sessionStorage.removeItem(TOKEN);
  localStorage.removeItem(TOKEN);
  store.setItem(TOKEN, $("#token").value.trim());
  $("#token").value = "";
  $("#token-form").hidden = true;
  $("#forget-token").hidden = false;
  refreshObjects();
  for (const row of rows) if (row.waitingForToken) row.resume();
});

$("#forget-token").addEventListener("click", () => {
  sessionStorage.removeItem(TOKEN);
  localStorage.removeItem(TOKEN);
  location.reload();
});
$("#forget-token").hidden = !savedToken();

async function api(method, path, init = {}) {
  const response = await fetch(new URL(path, base), {
    method,
    ...init,
    headers: { ...authHeaders(), ...init.headers },
  });
  if (response.status === 401) {
    askForToken(savedToken() ? "That token was not accepted." : "");
  }
  if (!response.ok) {
    let detail;
    try {
      detail = (await response.json()).detail;
    } catch {}
    throw new HttpError(response.status, detail);
  }
  return response;
}

// --- numbers for people ----------------------------------------------------------------
function size(bytes) {
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let unit = 0;
  while (bytes >= 1024 && unit < units.length - 1) {
    bytes /= 1024;
    unit++;
  }
  return `${unit ? bytes.toFixed(1) : bytes} ${units[unit]}`;
}

function duration(seconds) {
  seconds = Math.ceil(seconds);
  const h = Math.floor(seconds / 3600);
  const m = Math.floor((seconds % 3600) / 60);
  const s = String(seconds % 60).padStart(2, "0");
  return h ? `${h}:${String(m).padStart(2, "0")}:${s}` : `${m}:${s}`;
}

// Speed over the last few seconds, so that one slow chunk does not swing the estimate.
class Speedometer {
  constructor() {
    this.samples = [];
  }
  add(bytes) {
    const now = performance.now();
    this.samples.push([now, bytes]);
    while (this.samples.length > 2 && now - this.samples[0][0] > 5000) this.samples.shift();
  }
  reset() {
    this.samples = [];
  }
  get bytesPerSecond() {
    if (this.samples.length < 2) return 0;
    const [[t0, b0], [t1, b1]] = [this.samples[0], this.samples.at(-1)];
    return t1 - t0 < 300 ? 0 : ((b1 - b0) * 1000) / (t1 - t0);
  }
}

// --- uploads ---------------------------------------------------------------------------
const rows = [];
const prefixInput = $("#prefix");
prefixInput.value = localStorage.getItem("gateway-prefix") || "";

class UploadRow {
  constructor(file) {
    const prefix = prefixInput.value.trim();
    this.element = $("#upload-row").content.firstElementChild.cloneNode(true);
    this.element.dataset.name = file.name;
    $(".name", this.element).textContent = prefix + file.name;
    this.upload = new Upload(file, {
      endpoint: new URL("uploads/", base),
      metadata: { filename: file.name, prefix, filetype: file.type },
      target: prefix + file.name,
      chunkSize: CHUNK_SIZE,
      rate: RATE,
      headers: authHeaders,
    });
    this.speed = new Speedometer();
    this.upload.onprogress = (sent, total) => this.progress(sent, total);
    $(".pause", this.element).addEventListener("click", () => this.pause());
    $(".resume", this.element).addEventListener("click", () => this.resume());
    $(".cancel", this.element).addEventListener("click", () => this.cancel());
    this.setState("waiting", "waiting");
  }

  setState(state, text) {
    this.state = state;
    this.element.dataset.state = state;
    if (text !== undefined) $(".figures", this.element).textContent = text;
    const running = state === "uploading" || state === "waiting";
    $(".pause", this.element).hidden = !running;
    $(".resume", this.element).hidden = !(state === "paused" || state === "failed");
    $(".resume", this.element).textContent = state === "failed" ? "Retry" : "Resume";
    $(".cancel", this.element).hidden = state === "done";
  }

  progress(sent, total) {
    this.element.dataset.offset = sent;
    const bar = $("progress", this.element);
    bar.max = total || 1;
    bar.value = total ? sent : 1;
    const percent = total ? Math.floor((sent / total) * 100) : 100;
    $(".percent", this.element).textContent = `${percent}%`;
    if (this.state !== "uploading") return;
    this.speed.add(sent);
    const rate = this.speed.bytesPerSecond;
    const left = rate ? ` · ${duration((total - sent) / rate)} left` : "";
    $(".figures", this.element).textContent =
      `${size(sent)} of ${size(total)}` + (rate ? ` · ${size(rate)}/s${left}` : "");
  }

  async run() {
    this.setState("uploading", "starting");
    this.speed.reset();
    this.waitingForToken = false;
    try {
      const key = await this.upload.start();
      this.element.dataset.url = this.upload.url;
      this.element.dataset.key = key || "";
      this.progress(this.upload.file.size, this.upload.file.size);
      const where = key ? `stored as ${key}` : "stored";
      this.setState("done", `${where} · ${size(this.upload.file.size)}`);
      refreshObjects();
    } catch (error) {
      if (error instanceof PausedError || this.upload.paused) {
        this.setState("paused", `paused at ${size(this.upload.offset)}`);
      } else if (error instanceof HttpError && error.status === 401) {
        this.waitingForToken = true;
        this.setState("failed", "waiting for a token");
        askForToken(savedToken() ? "That token was not accepted." : "");
      } else {
        this.setState("failed", error.message);
      }
    } finally {
      if (this.upload.url) this.element.dataset.url = this.upload.url;
      if (this.upload.resumedFrom !== null) {
        this.element.dataset.resumedFrom = this.upload.resumedFrom;
      }
      showUnfinished();
      pump();
    }
  }

  pause() {
    if (this.state === "waiting") this.setState("paused", "paused");
    else this.upload.pause();
  }

  resume() {
    this.setState("waiting", "waiting");
    pump();
  }

  async cancel() {
    this.setState("cancelled", "cancelled");
    await this.upload.cancel();
    this.element.remove();
    rows.splice(rows.indexOf(this), 1);
    showUnfinished();
    pump();
  }
}

function pump() {
  let running = rows.filter((row) => row.state === "uploading").length;
  for (const row of rows) {
    if (running >= AT_ONCE) break;
    if (row.state === "waiting") {
      running++;
      row.run();
    }
  }
}

function addFiles(files) {
  for (const file of files) {
    const row = new UploadRow(file);
    rows.push(row);
    $("#upload-list").append(row.element);
  }
  $("#uploads").hidden = rows.length === 0;
  showUnfinished();
  pump();
}

$("#files").addEventListener("change", (event) => {
  addFiles([...event.target.files]);
  event.target.value = ""; // so that picking the same file again fires a change
});

const drop = $("#drop");
for (const name of ["dragenter", "dragover"]) {
  document.addEventListener(name, (event) => {
    event.preventDefault();
    drop.classList.add("over");
  });
}
for (const name of ["dragleave", "drop"]) {
  document.addEventListener(name, (event) => {
    event.preventDefault();
    if (name === "drop" || !event.relatedTarget) drop.classList.remove("over");
  });
}
document.addEventListener("drop", (event) => addFiles([...event.dataTransfer.files]));

// Uploads a reload or a crash cut off, except those this page is running.
function showUnfinished() {
  const active = new Set(rows.map((row) => row.upload.fingerprint));
  const list = $("#unfinished-list");
  list.replaceChildren();
  for (const entry of unfinishedUploads()) {
    if (active.has(entry.fingerprint)) continue;
    const item = $("#unfinished-row").content.firstElementChild.cloneNode(true);
    item.dataset.name = entry.name;
    $(".name", item).textContent = (entry.prefix || "") + entry.name;
    $(".figures", item).textContent = `${size(entry.size)} · ${new Date(entry.created).toLocaleString()}`;
    $(".discard", item).addEventListener("click", async () => {
      forgetUpload(entry.fingerprint);
      await fetch(entry.url, {
        method: "DELETE",
        headers: { "Tus-Resumable": "1.0.0", ...authHeaders() },
      }).catch(() => {});
      showUnfinished();
    });
    list.append(item);
  }
  $("#unfinished").hidden = list.children.length === 0;
}

// --- stored objects --------------------------------------------------------------------
let cursor = null;

const objectPath = (key) => "objects/" + key.split("/").map(encodeURIComponent).join("/");

async function refreshObjects(more = false) {
  const status = $("#objects-status");
  const query = new URLSearchParams({ prefix: prefixInput.value.trim(), limit: "100" });
  if (more && cursor) query.set("cursor", cursor);
  let listing;
  try {
    listing = await (await api("GET", `objects?${query}`)).json();
  } catch (error) {
    if (!more) $("#object-list").replaceChildren();
    status.textContent =
      error.status === 403 ? "This token may not list objects here." : error.message;
    return;
  }
  if (!more) $("#object-list").replaceChildren();
  for (const info of listing.objects) $("#object-list").append(objectRow(info));
  cursor = listing.next_cursor;
  $("#more").hidden = !cursor;
  const count = $("#object-list").children.length;
  status.textContent = count ? "" : "Nothing stored yet.";
}

function objectRow(info) {
  const item = $("#object-row").content.firstElementChild.cloneNode(true);
  item.dataset.key = info.key;
  const href = new URL(objectPath(info.key), base).href;
  for (const link of item.querySelectorAll("a")) {
    link.href = href;
    link.addEventListener("click", (event) => {
      if (!savedToken()) return; // an open gateway: the plain link does it
      event.preventDefault();
      downloadWithToken(info);
    });
  }
  $(".key", item).textContent = info.key;
  $(".size", item).textContent = size(info.size);
  $(".date", item).dateTime = info.last_modified;
  $(".date", item).textContent = new Date(info.last_modified).toLocaleString();
  $(".delete", item).addEventListener("click", async () => {
    if (!confirm(`Delete ${info.key}?`)) return;
    try {
      await api("DELETE", objectPath(info.key));
      item.remove();
    } catch (error) {
      $("#objects-status").textContent = error.message;
    }
  });
  return item;
}

// A link cannot carry the token, so the browser is sent to a presigned URL that lives a
// minute. A gateway without a signing key has none to give: then the object is fetched
// with the token and handed over from memory (fine for the sizes one downloads so).
async function downloadWithToken(info) {
  let url;
  try {
    const response = await api("POST", "presign", {
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ key: info.key, method: "GET", expires_in: 60 }),
    });
    url = (await response.json()).url;
  } catch (error) {
    if (error.status !== 404) {
      $("#objects-status").textContent = error.message;
      return;
    }
    url = URL.createObjectURL(await (await api("GET", objectPath(info.key))).blob());
    setTimeout(() => URL.revokeObjectURL(url), 60000);
  }
  const link = document.createElement("a");
  link.href = url;
  link.download = info.filename || info.key.split("/").pop();
  link.click();
}

$("#refresh").addEventListener("click", () => refreshObjects());
$("#more").addEventListener("click", () => refreshObjects(true));
prefixInput.addEventListener("change", () => {
  localStorage.setItem("gateway-prefix", prefixInput.value.trim());
  refreshObjects();
});

showUnfinished();
refreshObjects();
