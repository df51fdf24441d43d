// The page's file section: upload a recording to /api/transcribe as an async job (XHR, for upload progress),
// follow the job's progress, then list its sentences with their times and link its subtitles.
import { InputError, authHeaders, formatTime, parseHotwords, showHotwordsError, withToken } from "./asr.js";

const POLL_MS = 500;
const $ = (id) => document.getElementById(id);
let job = null; // { id, timer } while one runs

function showState(text, fraction) {
  $("file-state").textContent = text;
  const bar = $("file-progress");
  bar.hidden = fraction === null;
  if (fraction !== null) bar.value = Math.max(0, Math.min(1, fraction));
}

function showFileError(text) {
  $("file-error").textContent = text;
  $("file-error").hidden = !text;
}

function setBusy(busy) {
  $("upload").disabled = busy || !$("file").files.length;
  $("file").disabled = busy;
  $("cancel").hidden = !busy;
}

function errorText(xhrOrBody, status) {
  const error = xhrOrBody && xhrOrBody.error;
  return error ? `${error.message} (${error.code})` : `the server answered ${status}`;
}

/** POST the file with upload progress; resolves with the 202 body. */
function send(file, hotwords) {
  return new Promise((resolve, reject) => {
    const query = new URLSearchParams({ async: "1" });
    if (hotwords) query.set("hotwords", hotwords);
    const xhr = new XMLHttpRequest();
    xhr.open("POST", `/api/transcribe?${query}`);
    for (const [name, value] of Object.entries(authHeaders)) xhr.setRequestHeader(name, value);
    xhr.responseType = "json";
    xhr.upload.onprogress = (e) => e.lengthComputable && showState(`uploading ${file.name}`, e.loaded / e.total);
    xhr.onload = () => (xhr.status === 202 ? resolve(xhr.response) : reject(new Error(errorText(xhr.response, xhr.status))));
    xhr.onerror = () => reject(new Error("the upload failed (network)"));
    const form = new FormData();
    form.append("file", file, file.name);
    xhr.send(form);
  });
}

function addSentence(sentence) {
  const item = document.createElement("li");
  const times = document.createElement("span");
  times.className = "times";
  times.textContent = `[${formatTime(sentence.start)} – ${formatTime(sentence.end)}]`;
  const words = document.createElement("span");
  words.className = "text";
  words.textContent = sentence.text.replaceAll("<unk>", "");
  item.append(times, words);
  $("file-sentences").appendChild(item);
}

function showResult(id, result) {
  for (const sentence of result.sentences) addSentence(sentence);
  for (const [link, format] of [["file-srt", "srt"], ["file-vtt", "vtt"], ["file-txt", "text"]]) {
    $(link).href = withToken(`/api/transcribe/${id}?format=${format}`);
  }
  $("file-links").hidden = false;
  showState(`done: ${result.sentences.length} sentences, ${result.duration.toFixed(1)} s of audio`, null);
}

/** One look at the job; true once it has ended (done, failed or cancelled). */
async function poll(id) {
  const response = await fetch(`/api/transcribe/${id}`, { headers: authHeaders });
  const body = await response.json();
  if (!response.ok) throw new Error(errorText(body, response.status));
  const { state, progress } = body;
  if (state === "done") {
    showResult(id, body.result);
    return true;
  }
  if (state === "failed") throw new Error(`transcription failed: ${body.error.message}`);
  if (state === "cancelled") {
    showState("cancelled", null);
    return true;
  }
  const total = progress.segments_total === null ? "" : ` (${progress.segments_done}/${progress.segments_total} sentences)`;
  showState(`${state}${total}`, progress.audio_seconds_done / Math.max(progress.audio_seconds_total, 0.001));
  return false;
}

async function follow(id) {
  try {
    while (job && job.id === id && !(await poll(id))) {
      await new Promise((resolve) => { job.timer = setTimeout(resolve, POLL_MS); });
    }
  } catch (error) {
    showFileError(error.message);
  }
  if (job && job.id === id) finish();
}

function finish() {
  if (job && job.timer) clearTimeout(job.timer);
  job = null;
  setBusy(false);
}

async function upload() {
  const [file] = $("file").files;
  if (!file) return;
  let hotwords;
  try {
    hotwords = parseHotwords($("hotwords").value);
  } catch (error) {
    if (error instanceof InputError) return showHotwordsError(error.message);
    throw error;
  }
  showFileError("");
  $("file-sentences").replaceChildren();
  $("file-links").hidden = true;
  setBusy(true);
  job = { id: null, timer: null };
  try {
    const accepted = await send(file, hotwords);
    job.id = accepted.id;
    follow(accepted.id);
  } catch (error) {
    showFileError(error.message);
    showState("", null);
    finish();
  }
}

async function cancel() {
  if (!job || !job.id) return;
  const id = job.id;
  finish();
  await fetch(`/api/transcribe/${id}`, { method: "DELETE", headers: authHeaders });
  showState("cancelled", null);
}

$("file").addEventListener("change", () => setBusy(false));
$("upload").addEventListener("click", () => upload());
$("cancel").addEventListener("click", () => cancel());
