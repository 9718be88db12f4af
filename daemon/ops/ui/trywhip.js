// spoofwatch live operator page: "Try it", a WHIP (RFC 9725) publisher of this browser's microphone or
// of an audio file (an <audio> element's captureStream). Loaded after app.js (uses its `$` and `S`).
"use strict";

// ---- session --------------------------------------------------------------
const T = {pc: null, stream: null, location: null, token: ""};

function whipUrl() {
  const w = S.whip;
  if (!w) return null;
  return w.url || `${location.protocol}//${location.hostname}:${w.port}${w.path}`;
}

function renderWhip() {
  const url = whipUrl();
  $("#whip-url").textContent = url || "WHIP off ([ingest.whip] enabled = false)";
  if (!T.pc) $("#try-start").disabled = !url;
}

function tryStatus(state, text) {
  const e = $("#try-status");
  e.dataset.state = state;
  e.textContent = text;
  $("#try").dataset.state = state;
}

function iceGathered(pc, timeoutMs) {
  return new Promise((resolve) => {
    if (pc.iceGatheringState === "complete") { resolve(); return; }
    const done = () => { if (pc.iceGatheringState === "complete") resolve(); };
    pc.addEventListener("icegatheringstatechange", done);
    setTimeout(resolve, timeoutMs);  // host candidates come at once; do not hang on a slow interface
  });
}

async function sourceStream() {
  if ($("#try-source").value === "file") {
    const file = $("#try-file").files[0];
    if (!file) throw new Error("choose an audio file first");
    const audio = $("#try-audio");
    audio.hidden = false;
    audio.src = URL.createObjectURL(file);
    await audio.play();
    const capture = audio.captureStream || audio.mozCaptureStream;
    if (!capture) throw new Error("this browser cannot capture an <audio> element");
    return capture.call(audio);
  }
  // raw voice: the browser's noise suppression and echo cancellation would filter out exactly what a
  // detector looks at (a steady tone, such as the simulator's marker, is "noise" to them)
  return navigator.mediaDevices.getUserMedia({
    audio: {echoCancellation: false, noiseSuppression: false, autoGainControl: false}, video: false});
}

async function tryStart() {
  const url = whipUrl();
  if (!url || T.pc) return;
  T.token = $("#whip-token").value.trim();
  $("#try-start").disabled = true;
  $("#try-stop").disabled = false;
  try {
    tryStatus("connecting", "getting audio…");
    T.stream = await sourceStream();
    const pc = new RTCPeerConnection();
    T.pc = pc;
    for (const track of T.stream.getAudioTracks()) pc.addTransceiver(track, {direction: "sendonly"});
    await pc.setLocalDescription(await pc.createOffer());
    tryStatus("connecting", "gathering ICE…");
    await iceGathered(pc, 3000);
    tryStatus("connecting", "POST " + url);
    const headers = {"Content-Type": "application/sdp"};
    if (T.token) headers.Authorization = "Bearer " + T.token;
    const resp = await fetch(url, {method: "POST", headers, body: pc.localDescription.sdp});
    if (resp.status !== 201) {
      const why = (await resp.text()).slice(0, 200);
      throw new Error(`WHIP answered ${resp.status}${resp.status === 401 ? " (wrong or missing token)" : ""} ${why}`);
    }
    const loc = resp.headers.get("Location");
    T.location = loc ? new URL(loc, url).href : null;
    pc.addEventListener("connectionstatechange", () => {
      const s = pc.connectionState;
      if (s === "connected") tryStatus("live", "publishing: watch the new whip call");
      else if (s === "failed") tryStatus("error", "WebRTC connection failed");
      else if (s === "disconnected") tryStatus("connecting", "connection interrupted…");
    });
    await pc.setRemoteDescription({type: "answer", sdp: await resp.text()});
    tryStatus("connecting", "connecting media…");
  } catch (err) {
    tryStatus("error", String(err.message || err));
    await tryStop(true);
  }
}

async function tryStop(keepStatus) {
  const {pc, stream, location: loc, token} = T;
  T.pc = null; T.stream = null; T.location = null;
  if (loc) {
    try {
      await fetch(loc, {method: "DELETE", headers: token ? {Authorization: "Bearer " + token} : {}});
    } catch (err) { /* the session also ends by inactivity on the daemon */ }
  }
  if (pc) pc.close();
  if (stream) for (const t of stream.getTracks()) t.stop();
  const audio = $("#try-audio");
  audio.pause();
  $("#try-start").disabled = !whipUrl();
  $("#try-stop").disabled = true;
  if (keepStatus !== true) tryStatus("stopped", "stopped");
}

// ---- wiring ---------------------------------------------------------------------------------------
$("#try-start").addEventListener("click", tryStart);
$("#try-stop").addEventListener("click", () => tryStop(false));
$("#try-source").addEventListener("change", (e) => {
  const file = e.target.value === "file";
  $("#try-file").hidden = !file;
  if (file) $("#try-file").click();
});
window.addEventListener("beforeunload", () => { if (T.location) tryStop(true); });
