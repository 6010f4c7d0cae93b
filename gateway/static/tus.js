// A small tus 1.0.0 client: creation, PATCH in chunks, pause, resume and termination.
//
//   const upload = new Upload(file, { endpoint: "/uploads/", metadata: { filename: file.name } });
//   upload.onprogress = (sent, total) => ...;
//   await upload.start();   // resolves when the last byte is stored; upload.objectKey says where
//   upload.pause();         // start() then rejects with a PausedError; start() again resumes
//
// Each upload's URL is kept in localStorage under a fingerprint of the file and its target
// (name, size, last modification, key), so that picking the same file again after a reload
// or a crash carries on from the offset the server has, instead of sending it all again.

const TUS_VERSION = "1.0.0";
const STORE_PREFIX = "tus-upload:";
const KIB = 1024;

export class HttpError extends Error {
  constructor(status, detail) {
    super(detail || `The gateway answered ${status}.`);
    this.status = status;
  }
}

export class PausedError extends Error {
  constructor() {
    super("Paused.");
  }
}

export function fingerprint(file, target) {
  return STORE_PREFIX + JSON.stringify([file.name, file.size, file.lastModified, target]);
}

// The uploads this browser started and did not finish, newest first.
export function unfinishedUploads() {
  const found = [];
  for (let i = 0; i < localStorage.length; i++) {
    const name = localStorage.key(i);
    if (!name.startsWith(STORE_PREFIX)) continue;
    try {
      found.push({ fingerprint: name, ...JSON.parse(localStorage.getItem(name)) });
    } catch {
      localStorage.removeItem(name); // not ours, or from an older page
    }
  }
  return found.sort((a, b) => b.created - a.created);
}

export function forgetUpload(name) {
  localStorage.removeItem(name);
}

function base64(text) {
  // btoa() takes Latin-1 only; filenames are any Unicode, so go through UTF-8 bytes.
  let binary = "";
  for (const byte of new TextEncoder().encode(text)) binary += String.fromCharCode(byte);
  return btoa(binary);
}

export function encodeMetadata(metadata) {
  return Object.entries(metadata)
    .filter(([, value]) => value !== undefined && value !== null && value !== "")
    .map(([key, value]) => `${key} ${base64(String(value))}`)
    .join(",");
}

async function problemDetail(response) {
  try {
    return (await response.json()).detail;
  } catch {
    return undefined;
  }
}

const wait = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

export class Upload {
  // options: endpoint, metadata, target (for the fingerprint), chunkSize, rate (bytes per
  // second, 0 for no limit), headers (a function returning extra headers, e.g. Authorization).
  constructor(file, options) {
    this.file = file;
    this.endpoint = new URL(options.endpoint, location.href).href;
    this.metadata = options.metadata || {};
    this.chunkSize = options.chunkSize || 8 * KIB * KIB;
    this.rate = options.rate || 0;
    this.extraHeaders = options.headers || (() => ({}));
    this.fingerprint = fingerprint(file, options.target ?? file.name);
    this.url = null;
    this.offset = 0;
    this.resumedFrom = null; // the server's offset when an earlier upload was picked up
    this.objectKey = null;
    this.onprogress = () => {};
    this.xhr = null;
    this.paused = false;
  }

  async start() {
    this.paused = false;
    if (!this.url) this.url = (await this.#resume()) || (await this.#create());
    else await this.#syncOffset();
    await this.#send();
    forgetUpload(this.fingerprint);
    return this.objectKey;
  }

  pause() {
    this.paused = true;
    if (this.xhr) this.xhr.abort();
  }

  // Termination: the server drops what it has, and this browser forgets the upload.
  async cancel() {
    this.pause();
    forgetUpload(this.fingerprint);
    if (this.url) await this.#request("DELETE", this.url).catch(() => {});
  }

  #headers(more) {
    return { "Tus-Resumable": TUS_VERSION, ...this.extraHeaders(), ...more };
  }

  #request(method, url, headers = {}) {
    return fetch(url, { method, headers: this.#headers(headers), cache: "no-store" });
  }

  async #resume() {
    const saved = localStorage.getItem(this.fingerprint);
    if (!saved) return null;
    const { url } = JSON.parse(saved);
    const response = await this.#request("HEAD", url);
    const length = Number(response.headers.get("Upload-Length"));
    if ([403, 404, 410].includes(response.status) || (response.ok && length !== this.file.size)) {
      forgetUpload(this.fingerprint); // expired, removed, or not this file after all
      return null;
    }
    if (!response.ok) throw new HttpError(response.status);
    this.offset = Number(response.headers.get("Upload-Offset"));
    this.objectKey = response.headers.get("X-Object-Key");
    this.resumedFrom = this.offset;
    this.onprogress(this.offset, this.file.size);
    return url;
  }

  async #create() {
    const response = await this.#request("POST", this.endpoint, {
      "Upload-Length": String(this.file.size),
      "Upload-Metadata": encodeMetadata(this.metadata),
    });
    if (response.status !== 201) {
      throw new HttpError(response.status, await problemDetail(response));
    }
    const url = new URL(response.headers.get("Location"), this.endpoint).href;
    const record = { url, name: this.file.name, size: this.file.size, created: Date.now() };
    localStorage.setItem(this.fingerprint, JSON.stringify({ ...record, ...this.metadata }));
    this.offset = 0;
    this.objectKey = response.headers.get("X-Object-Key"); // an empty file is done already
    return url;
  }

  async #syncOffset() {
    const response = await this.#request("HEAD", this.url);
    if (!response.ok) throw new HttpError(response.status);
    this.offset = Number(response.headers.get("Upload-Offset"));
    this.objectKey = response.headers.get("X-Object-Key");
    this.onprogress(this.offset, this.file.size);
  }

  async #send() {
    const began = performance.now();
    const firstOffset = this.offset;
    let busy = 0; // answers saying another request still holds the upload
    let failures = 0; // connections lost in a row
    while (this.offset < this.file.size) {
      if (this.paused) throw new PausedError();
      const end = Math.min(this.offset + this.chunkSize, this.file.size);
      let xhr;
      try {
        xhr = await this.#patch(this.file.slice(this.offset, end));
        failures = 0;
      } catch (error) {
        // A phone changing networks: try again a few times, then let the user decide.
        if (!(error instanceof HttpError) || ++failures > 4) throw error;
        await wait(1000 * 2 ** (failures - 1));
        await this.#syncOffset();
        continue;
      }
      if (xhr.status === 204) {
        this.offset = Number(xhr.getResponseHeader("Upload-Offset"));
        this.objectKey = xhr.getResponseHeader("X-Object-Key") || this.objectKey;
        busy = 0;
      } else if (xhr.status === 423 || xhr.status === 409) {
        // A PATCH cut off by a pause or a reload may still hold the upload for a moment,
        // or have stored more than we know of: wait a little, then ask where it stands.
        if (++busy > 20) throw new HttpError(xhr.status, "The upload stays locked.");
        await wait(Math.min(100 * busy, 1000));
        await this.#syncOffset();
      } else if (xhr.status === 460) {
        // The chunk was damaged on the way and thrown away; sending it again is enough.
        if (++busy > 3) throw new HttpError(xhr.status, "Chunks keep arriving damaged.");
      } else {
        if (xhr.status === 404 || xhr.status === 410) forgetUpload(this.fingerprint);
        throw new HttpError(xhr.status, xhr.response && xhr.response.detail);
      }
      this.onprogress(this.offset, this.file.size);
      if (this.rate) {
        const due = ((this.offset - firstOffset) / this.rate) * 1000;
        await wait(Math.max(0, due - (performance.now() - began)));
      }
    }
  }

  async #patch(blob) {
    const body = await blob.arrayBuffer();
    const headers = this.#headers({
      "Content-Type": "application/offset+octet-stream",
      "Upload-Offset": String(this.offset),
    });
    // crypto.subtle exists in secure contexts only (https, localhost).
    if (globalThis.crypto && crypto.subtle) {
      const digest = new Uint8Array(await crypto.subtle.digest("SHA-256", body));
      headers["Upload-Checksum"] = "sha256 " + btoa(String.fromCharCode(...digest));
    }
    if (this.paused) throw new PausedError();
    return new Promise((resolve, reject) => {
      // XMLHttpRequest, not fetch: only it reports the progress of a request body.
      const xhr = new XMLHttpRequest();
      this.xhr = xhr;
      xhr.open("PATCH", this.url);
      xhr.responseType = "json";
      for (const [name, value] of Object.entries(headers)) xhr.setRequestHeader(name, value);
      xhr.upload.onprogress = (event) => this.onprogress(this.offset + event.loaded, this.file.size);
      xhr.onload = () => resolve(xhr);
      xhr.onabort = () => reject(new PausedError());
      xhr.onerror = () => reject(new HttpError(0, "The connection to the gateway failed."));
      xhr.onloadend = () => {
        this.xhr = null;
      };
      xhr.send(body);
    });
  }
}
