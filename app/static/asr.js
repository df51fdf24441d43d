// The browser client: microphone → 16 kHz 16-bit PCM frames over the FunASR WebSocket protocol; partial and
// final transcripts and the queue banner from what the gateway sends back.
const FRAME_SAMPLES = 960; // 60 ms at 16 kHz, what FunASR's own clients send (chunk_interval 10)
const BUSY_PENDING = 50; // queue_status above this shows the banner as busy

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

function onResult(message) {
  const partial = $("partial");
  partial.textContent += message.text;
  if (message.is_final) {
    const item = document.createElement("li");
    item.textContent = partial.textContent;
    $("finals").appendChild(item);
    partial.textContent = "";
  }
}

function onMessage(event) {
  const message = JSON.parse(event.data);
  if (message.type === "queue_status") onQueueStatus(message.pending);
  else if (message.type === "error") showError(`${message.code}: ${message.message}`);
  else if (message.mode) {
    onResult(message);
    if (message.is_final && session && session.stopping) finish();
  }
}

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

function openSocket(mic) {
  const scheme = location.protocol === "https:" ? "wss" : "ws";
  const ws = new WebSocket(withToken(`${scheme}://${location.host}/ws`), ["binary"]);
  ws.binaryType = "arraybuffer";
  ws.onopen = () => {
    ws.send(JSON.stringify({
      mode: "online", chunk_size: [5, 10, 5], chunk_interval: 10, wav_name: "browser",
      wav_format: "pcm", audio_fs: 16000, is_speaking: true, itn: true,
    }));
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
  $("start").disabled = true;
  try {
    if (!(await admitted())) {
      $("start").disabled = false;
      return;
    }
    const mic = await openMicrophone();
    session = { mic, ws: openSocket(mic), stopping: false };
    $("stop").disabled = false;
    setState("connecting");
  } catch (error) {
    showError(String(error));
    $("start").disabled = false;
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
  $("start").disabled = false;
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
