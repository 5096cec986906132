// The page's Live mode: camera frames drawn to a canvas, sent as JPEGs over the /v1/live WebSocket, the stylized
// answers drawn to a second canvas. One frame in flight: the next one is sent when the answer (or an error) for the
// last one comes, so the latency stays bounded whatever the server's speed. The controls of app.js (styles, strength,
// scale, preserve colour, max side) are sent as settings whenever they change. What the server sends back is data:
// numbers go in with textContent, pictures through createImageBitmap, never markup.
"use strict";
const live = { ws: null, stream: null, sent: 0, answered: 0, sentAt: new Map(), header: null, answers: [],
  latencies: [], timer: null };

function liveSettings() {
  const settings = { strength: Number($("strength").value), style_scale: Number($("scale").value),
    preserve_color: $("preserve").checked, temporal: $("smooth").checked ? 0.5 : 0, quality: 85 };
  if (state.picked.length > 1) settings.mix = state.picked.map((n) => `${n}=1`).join(",");
  else if (state.picked.length === 1) settings.style = state.picked[0];
  if ($("max-side").value) settings.max_side = Number($("max-side").value);
  return settings;
}

function liveOpen() {
  return live.ws !== null && live.ws.readyState === WebSocket.OPEN;
}

function sendSettings() {
  if (liveOpen()) live.ws.send(JSON.stringify(liveSettings()));
}

function setMode(mode) {
  document.body.classList.toggle("live", mode === "live");
  for (const [id, on] of [["mode-photo", mode === "photo"], ["mode-live", mode === "live"]]) {
    $(id).classList.toggle("picked", on);
    $(id).setAttribute("aria-selected", String(on));
  }
  if (mode !== "live") stopLive();
}

async function startLive() {
  const [width, height] = $("live-size").value.split("x").map(Number);
  $("live-start").disabled = true;
  try {
    live.stream = await navigator.mediaDevices.getUserMedia({ audio: false,
      video: { width: { ideal: width }, height: { ideal: height } } });
  } catch (error) {
    message(`camera: ${error.name}: ${error.message}`, true);
    $("live-start").disabled = false;
    return;
  }
  $("camera").srcObject = live.stream;
  await $("camera").play();
  $("live-in").width = width;
  $("live-in").height = height;
  Object.assign(live, { sent: 0, answered: 0, header: null, answers: [], latencies: [] });
  live.sentAt.clear();
  const scheme = location.protocol === "https:" ? "wss:" : "ws:";
  live.ws = new WebSocket(`${scheme}//${location.host}/v1/live`);
  live.ws.binaryType = "blob";
  live.ws.addEventListener("open", () => { sendSettings(); sendFrame(); message("live"); });
  live.ws.addEventListener("message", (event) => onAnswer(event.data));
  live.ws.addEventListener("close", (event) => {
    if (live.ws !== null) message(`live connection closed (${event.code})`, event.code !== 1000);
    stopLive();
  });
  $("live-stop").disabled = false;
  live.timer = setInterval(showStats, 500);
}

function stopLive() {
  const ws = live.ws;
  live.ws = null;
  if (ws !== null) ws.close(1000);
  if (live.stream !== null) for (const track of live.stream.getTracks()) track.stop();
  live.stream = null;
  $("camera").srcObject = null;
  clearInterval(live.timer);
  $("live-start").disabled = false;
  $("live-stop").disabled = true;
}

function sendFrame() {
  if (!liveOpen()) return;
  const canvas = $("live-in");
  canvas.getContext("2d").drawImage($("camera"), 0, 0, canvas.width, canvas.height);
  canvas.toBlob((blob) => {
    if (blob === null || !liveOpen()) return;
    live.sent += 1;  // the server numbers frames as they arrive: 1, 2, ... the same as this count
    live.sentAt.set(live.sent, performance.now());
    live.ws.send(blob);
  }, "image/jpeg", 0.85);
}

async function onAnswer(data) {
  if (typeof data === "string") {
    const answer = JSON.parse(data);
    if (answer.error !== undefined) {
      message(answer.error, true);
      if (answer.seq !== undefined) {  // that frame will not be answered: send the next one a little later
        live.sentAt.delete(answer.seq);
        setTimeout(sendFrame, 100);
      }
    } else if (answer.seq !== undefined) {
      live.header = answer;
    }
    return;
  }
  const header = live.header;
  live.header = null;
  if (header === null) return;
  const now = performance.now();
  const sentAt = live.sentAt.get(header.seq);
  for (const seq of live.sentAt.keys()) if (seq <= header.seq) live.sentAt.delete(seq);
  sendFrame();  // the next frame goes out while this one is drawn
  const picture = await createImageBitmap(data);
  const out = $("live-out");
  if (out.width !== header.width || out.height !== header.height) [out.width, out.height] = [header.width, header.height];
  out.getContext("2d").drawImage(picture, 0, 0);
  picture.close();
  live.answered += 1;
  live.answers.push(now);
  if (sentAt !== undefined) live.latencies.push(now - sentAt);
  out.dataset.seq = String(header.seq);
  $("live-frames").textContent = String(live.answered);
}

function showStats() {
  const now = performance.now();
  live.answers = live.answers.filter((t) => now - t < 2000);
  live.latencies = live.latencies.slice(-10);
  $("live-fps").textContent = (live.answers.length / 2).toFixed(1);
  if (live.latencies.length > 0) {
    $("live-latency").textContent = String(Math.round(live.latencies.reduce((a, b) => a + b) / live.latencies.length));
  }
}

$("mode-photo").addEventListener("click", () => setMode("photo"));
$("mode-live").addEventListener("click", () => setMode("live"));
$("live-start").addEventListener("click", startLive);
$("live-stop").addEventListener("click", stopLive);
for (const id of ["strength", "scale", "preserve", "max-side", "smooth"]) $(id).addEventListener("change", sendSettings);
document.addEventListener("instyle:controls", sendSettings);
window.addEventListener("pagehide", stopLive);
