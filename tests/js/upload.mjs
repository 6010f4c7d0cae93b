// Uploads a file to a tus endpoint with tus-js-client under Node, resuming an upload a
// previous run left unfinished (its URL is kept in a file). Prints one JSON line per event.
//   node upload.mjs --endpoint URL --file PATH --storage PATH [--key K] [--token T]
//                   [--chunk-size N] [--abort-after N]
// --abort-after N aborts once N bytes were sent, and exits 3, as a user closing the tab.
import fs from "node:fs";
import * as tus from "tus-js-client";

const args = Object.fromEntries(
  process.argv.slice(2).reduce((pairs, arg, i, all) =>
    arg.startsWith("--") ? [...pairs, [arg.slice(2), all[i + 1]]] : pairs, []));
const say = (event) => console.log(JSON.stringify(event));
const size = fs.statSync(args.file).size;
const abortAfter = args["abort-after"] ? Number(args["abort-after"]) : null;
let aborted = false;

const upload = new tus.Upload(fs.createReadStream(args.file), {
  endpoint: args.endpoint,
  uploadSize: size,
  chunkSize: Number(args["chunk-size"] || 4 * 1024 * 1024),
  metadata: { filename: args.file.split("/").pop(), ...(args.key ? { key: args.key } : {}) },
  headers: args.token ? { Authorization: `Bearer ${args.token}` } : {},
  urlStorage: new tus.FileUrlStorage(args.storage),
  storeFingerprintForResuming: true,
  removeFingerprintOnSuccess: true,
  retryDelays: [0, 250, 500, 1000],
  onProgress(sent, total) {
    if (abortAfter !== null && sent >= abortAfter && !aborted) {
      aborted = true;
      upload.abort().then(() => { say({ event: "aborted", sent }); process.exit(3); });
    }
  },
  onSuccess() { say({ event: "done", url: upload.url }); },
  onError(error) { say({ event: "error", message: String(error) }); process.exit(1); },
});

const previous = await upload.findPreviousUploads();
if (previous.length > 0) {
  upload.resumeFromPreviousUpload(previous[0]);
  say({ event: "resuming", url: previous[0].uploadUrl });
}
upload.start();
