// The browser client: microphone → 16 kHz 16-bit PCM frames over the FunASR WebSocket protocol, in one of
// FunASR's three modes, with optional hotwords; partial text, corrected sentences and the queue banner from what
// the gateway sends back.
const FRAME_SAMPLES = 960; // 60 ms at 16 kHz, what FunASR's own clients send (chunk_interval 10)
const BUSY_PENDING = 50; // queue_status above this shows the banner as busy
// Hotword bounds are the server's (tasks/options.py): a page that checks first shows the user where the problem is.
const HOTWORD_WEIGHT = 20; // FunASR's weight for a hotword given without one
const HOTWORD_WEIGHT_RANGE = [1, 100];
const MAX_HOTWORDS = 128;
const MAX_HOTWORDS_BYTES = 4096; // UTF-8 bytes of the JSON string as sent
const WEIGHT_LIKE = /^[-+.\d]*\d[-+.\d]*$/; // a line's last word that was meant as a weight, valid or not
// Results that carry a whole punctuated sentence with start_time/end_time, replacing the live partials.
const SENTENCE_MODES = new Set(["2pass-offline", "offline"]);

const $ = (id) => document.getElementById(id);
// The API token, when the service needs one, comes in the page's own URL (/?token=…). fetch sends it in an
// Authorization header, which stays out of URLs and so out of access logs; only the WebSocket URL carries it,
// because a browser cannot set headers on a WebSocket handshake.
const token = new URLSearchParams(location.search).get("token");
const authHeaders = token ? { Authorization: `Bearer ${token}` } : {};
const withToken = (url) => (token ? `${url}${url.includes("?") ? "&" : "?"}token=${encodeURIComponent(token)}` : url);

let session = null;

function setState(text) {
  $("state").textContent = text;
}

function showError(text) {
  $("error").textContent = text;
  $("error").hidden = !text;
}

function showQueue(text, kind) {
  const banner = $("queue");
  banner.textContent = text;
  banner.className = `banner ${kind || ""}`;
  banner.hidden = false;
}

function onQueueStatus(pending) {
  const kind = pending > BUSY_PENDING ? "busy" : "";
  showQueue(pending === 0 ? "Queue: no backlog" : `Queue: ${pending} chunks waiting`, kind);
}

// ---- Settings: the mode and FunASR's hotwords, checked before anything is sent ----

class InputError extends Error {}

function showHotwordsError(text) {
  $("hotwords-error").textContent = text;
  $("hotwords-error").hidden = !text;
  $("hotwords").setAttribute("aria-invalid", text ? "true" : "false");
}

function checkWeight(weight, where) {
  const [low, high] = HOTWORD_WEIGHT_RANGE;
  if (!Number.isInteger(weight) || weight < low || weight > high) {
    throw new InputError(`${where}: the weight must be a whole number from ${low} to ${high}`);
  }
  return weight;
}

function hotwordsFromLines(text) {
  // FunASR's own page reads the same lines: a word or phrase, then its weight as the last word.
  const words = {};
  text.split(/\r?\n/).forEach((line, index) => {
    const parts = line.trim().split(/\s+/).filter(Boolean);
    let weight = HOTWORD_WEIGHT;
    if (parts.length > 1 && WEIGHT_LIKE.test(parts[parts.length - 1])) {
      const last = parts.pop();
      weight = checkWeight(/^\d+$/.test(last) ? Number(last) : NaN, `line ${index + 1}`);
    }
    if (parts.length) words[parts.join(" ")] = weight;
  });
  return words;
}

function hotwordsFromJson(text) {
  let words;
  try {
    words = JSON.parse(text);
  } catch (error) {
    throw new InputError(`hotwords are not valid JSON: ${error.message}`);
  }
  for (const [word, weight] of Object.entries(words)) {
    if (!word.trim()) throw new InputError("hotwords JSON has an empty word");
    checkWeight(weight, `"${word}"`);
  }
  return words;
}

/** The hotwords field → FunASR's `hotwords`: a JSON string of {word: weight}, or "" for none. Throws InputError. */
function parseHotwords(text) {
  const trimmed = text.trim();
  if (!trimmed) return "";
  const words = trimmed.startsWith("{") ? hotwordsFromJson(trimmed) : hotwordsFromLines(trimmed);
  const count = Object.keys(words).length;
  if (count === 0) return "";
  if (count > MAX_HOTWORDS) throw new InputError(`${count} hotwords; the limit is ${MAX_HOTWORDS}`);
  const json = JSON.stringify(words);
  const size = new TextEncoder().encode(json).length;
  if (size > MAX_HOTWORDS_BYTES) throw new InputError(`hotwords are ${size} bytes; the limit is ${MAX_HOTWORDS_BYTES}`);
  return json;
}

function readSettings() {
  return { mode: $("mode").value, hotwords: parseHotwords($("hotwords").value) };
}

/** While a session runs its settings are fixed: the server reads them from the first message only. */
function setRunning(running) {
  for (const id of ["start", "mode", "hotwords"]) $(id).disabled = running;
}

// ---- The transcript: live partials in #partial, finished sentences in #finals ----

/** Milliseconds from the start of the session's audio → m:ss.s */
function formatTime(ms) {
  const tenths = Math.round(Math.max(0, ms) / 100);
  return `${Math.floor(tenths / 600)}:${((tenths % 600) / 10).toFixed(1).padStart(4, "0")}`;
}

function addSentence(text, message) {
  const item = document.createElement("li");
  if (message && Number.isFinite(message.start_time) && Number.isFinite(message.end_time)) {
    const times = document.createElement("span");
    times.className = "times";
    times.textContent = `[${formatTime(message.start_time)} – ${formatTime(message.end_time)}]`;
    item.appendChild(times);
  }
  const words = document.createElement("span");
  words.className = "text";
  words.textContent = text;
  item.appendChild(words);
  $("finals").appendChild(item);
}

function onResult(message) {
  // online and 2pass-online text accumulates on the live line; a 2pass-offline or offline sentence replaces
  // whatever partials led up to it. At the end, partial text that no sentence replaced is kept as a sentence.
  const live = $("partial");
  const text = typeof message.text === "string" ? message.text : "";
  if (SENTENCE_MODES.has(message.mode)) {
    if (text) addSentence(text, message);
    live.textContent = "";
  } else {
    live.textContent += text;
  }
  if (message.is_final && live.textContent) {
    addSentence(live.textContent);
    live.textContent = "";
  }
}

function onMessage(event) {
  const message = JSON.parse(event.data);
  if (message.type === "queue_status") onQueueStatus(message.pending);
  else if (message.type === "error") showError(`${message.code}: ${message.message}`);
  else if (message.mode) {
    onResult(message);
    if (message.is_end && session && session.stopping) finish();
  }
}

// ---- The session: admission, microphone, socket ----

async function admitted() {
  // A browser cannot read the status of a refused WebSocket handshake, so ask first why we would be refused.
  const response = await fetch("/api/admission", { headers: authHeaders });
  const body = await response.json();
  if (body.admitting) return true;
  const retry = body.retry_after ? ` Try again in ${body.retry_after} s.` : "";
  showQueue(`${body.refusal.message}.${retry}`, "refused");
  return false;
}

async function openMicrophone() {
  const stream = await navigator.mediaDevices.getUserMedia({
    // The browser's voice processing would alter the audio the model hears.
    audio: { channelCount: 1, echoCancellation: false, noiseSuppression: false, autoGainControl: false },
  });
  const context = new AudioContext({ sampleRate: 16000 });
  await context.audioWorklet.addModule("/static/pcm-worklet.js");
  const source = context.createMediaStreamSource(stream);
  const capture = new AudioWorkletNode(context, "pcm-capture", {
    processorOptions: { frameSamples: FRAME_SAMPLES },
  });
  return { stream, context, source, capture };
}

function openSocket(mic, settings) {
  const scheme = location.protocol === "https:" ? "wss" : "ws";
  const ws = new WebSocket(withToken(`${scheme}://${location.host}/ws`), ["binary"]);
  ws.binaryType = "arraybuffer";
  ws.onopen = () => {
    const first = {
      mode: settings.mode, chunk_size: [5, 10, 5], chunk_interval: 10, wav_name: "browser",
      wav_format: "pcm", audio_fs: 16000, is_speaking: true, itn: true,
    };
    if (settings.hotwords) first.hotwords = settings.hotwords; // FunASR omits the field when there are none
    ws.send(JSON.stringify(first));
    mic.capture.port.onmessage = (event) => ws.readyState === WebSocket.OPEN && ws.send(event.data);
    mic.source.connect(mic.capture);
    setState("listening");
  };
  ws.onmessage = onMessage;
  ws.onclose = (event) => {
    if (event.code !== 1000 && event.code !== 1005) showError(`connection closed (${event.code} ${event.reason})`);
    finish();
  };
  return ws;
}

async function start() {
  showError("");
  let settings;
  try {
    settings = readSettings();
  } catch (error) {
    if (!(error instanceof InputError)) throw error;
    showHotwordsError(error.message);
    return;
  }
  setRunning(true);
  try {
    if (!(await admitted())) {
      setRunning(false);
      return;
    }
    const mic = await openMicrophone();
    session = { mic, ws: openSocket(mic, settings), stopping: false };
    $("stop").disabled = false;
    setState("connecting");
  } catch (error) {
    showError(String(error));
    setRunning(false);
  }
}

function releaseMicrophone(mic) {
  mic.source.disconnect();
  mic.stream.getTracks().forEach((track) => track.stop());
  mic.context.close();
}

function stop() {
  if (!session || session.stopping) return;
  session.stopping = true;
  $("stop").disabled = true;
  releaseMicrophone(session.mic);
  if (session.ws.readyState === WebSocket.OPEN) {
    session.ws.send(JSON.stringify({ is_speaking: false }));
    setState("finishing");
  } else {
    finish();
  }
}

function finish() {
  if (!session) return;
  const { ws, mic, stopping } = session;
  session = null;
  if (!stopping) releaseMicrophone(mic);
  if (ws.readyState === WebSocket.OPEN) ws.close(1000);
  setRunning(false);
  $("stop").disabled = true;
  setState("idle");
}

async function describeModel() {
  // Without the token /healthz answers only its status, so the page sends it to learn about the model.
  const health = await (await fetch("/healthz", { headers: authHeaders })).json();
  if (health.default_model) {
    $("notice").textContent = "Demo model: the server runs a tiny model with random weights, so the text is meaningless.";
    $("notice").hidden = false;
  }
}

describeModel().catch(() => {});
$("start").addEventListener("click", start);
$("stop").addEventListener("click", stop);
$("hotwords").addEventListener("input", () => showHotwordsError(""));
// For tests/browser/test_page.py: lets a test feed the display messages the backend cannot produce on demand.
window.__asrTest = { onMessage };

// The file section (files.js) shares the hotword parsing, the time format and the token.
export { InputError, authHeaders, formatTime, parseHotwords, showHotwordsError, withToken };
