// The instyle page: plain DOM, no framework, talking to the same /v1 API as any client. Everything from the
// server or the user (style names, file names, error messages) goes in with textContent or as an attribute,
// never as markup; the server's Content-Security-Policy runs no inline script besides.
"use strict";
const $ = (id) => document.getElementById(id);
const state = { file: null, picked: [], styles: [], resultUrl: null };

function message(text, isError = false) {
  $("message").textContent = text;
  $("message").className = isError ? "error" : "";
}

async function loadStyles() {
  const answer = await fetch("/v1/styles");
  const body = await answer.json();
  state.styles = body.styles;
  for (const style of body.styles) {
    const button = document.createElement("button");
    button.className = "style";
    button.dataset.name = style.name;
    button.title = style.name;
    const image = document.createElement("img");  // names come from model files: data, never markup
    image.src = style.thumbnail;
    image.alt = "";
    const label = document.createElement("span");
    label.textContent = style.name;
    button.append(image, label);
    button.addEventListener("click", (event) => pick(style.name, event.shiftKey && body.multi_style));
    $("styles").append(button);
    if (style.default) state.picked = [style.name];
  }
  showPicked();
  $("status").textContent = `${body.styles.length} style(s)`;
}

function pick(name, adding) {
  if (!adding) state.picked = [name];
  else if (state.picked.includes(name) && state.picked.length > 1) state.picked = state.picked.filter((n) => n !== name);
  else if (!state.picked.includes(name)) state.picked.push(name);
  showPicked();
}

function showPicked() {
  for (const button of document.querySelectorAll(".style")) {
    button.classList.toggle("picked", state.picked.includes(button.dataset.name));
  }
  $("mix").textContent = state.picked.length > 1 ? "mix: " + state.picked.join(" + ") + " (equal weights)" : "";
  document.dispatchEvent(new Event("instyle:controls"));  // live.js sends the new settings while it runs
}

function setFile(file) {
  if (!file) return;
  state.file = file;
  $("before").src = URL.createObjectURL(file);
  $("after").removeAttribute("src");
  $("compare").hidden = false;
  $("empty").hidden = true;
  $("go").disabled = false;
  message(`${file.name}: ready`);
}

async function stylize() {
  if (!state.file) return;
  const form = new FormData();
  form.append("image", state.file, state.file.name);
  if (state.picked.length > 1) form.append("mix", state.picked.map((n) => `${n}=1`).join(","));
  else if (state.picked.length === 1) form.append("style", state.picked[0]);
  form.append("strength", $("strength").value);
  form.append("style_scale", $("scale").value);
  form.append("preserve_color", $("preserve").checked ? "true" : "false");
  if ($("max-side").value) form.append("max_side", $("max-side").value);
  form.append("format", "png");
  $("go").disabled = true;
  message("stylizing…");
  const started = performance.now();
  try {
    const answer = await fetch("/v1/stylize", { method: "POST", body: form });
    if (!answer.ok) {
      const body = await answer.json().catch(() => ({ error: answer.statusText }));
      message(`${answer.status}: ${body.error}`, true);
      return;
    }
    const blob = await answer.blob();
    if (state.resultUrl) URL.revokeObjectURL(state.resultUrl);
    state.resultUrl = URL.createObjectURL(blob);
    $("after").src = state.resultUrl;
    $("download").href = state.resultUrl;
    $("download").download = state.file.name.replace(/\.[^.]*$/, "") + "-stylized.png";
    $("download").hidden = false;
    message(`done in ${Math.round(performance.now() - started)} ms`);
  } catch (error) {
    message(String(error), true);
  } finally {
    $("go").disabled = false;
  }
}

$("file").addEventListener("change", (event) => setFile(event.target.files[0]));
for (const kind of ["dragenter", "dragover"]) {
  $("drop").addEventListener(kind, (event) => { event.preventDefault(); $("drop").classList.add("over"); });
}
for (const kind of ["dragleave", "drop"]) {
  $("drop").addEventListener(kind, () => $("drop").classList.remove("over"));
}
$("drop").addEventListener("drop", (event) => { event.preventDefault(); setFile(event.dataTransfer.files[0]); });
$("strength").addEventListener("input", () => { $("strength-value").textContent = Number($("strength").value).toFixed(2); });
$("scale").addEventListener("input", () => { $("scale-value").textContent = Number($("scale").value).toFixed(2); });
$("split").addEventListener("input", () => { $("after-clip").style.clipPath = `inset(0 0 0 ${$("split").value}%)`; });
$("go").addEventListener("click", stylize);
loadStyles().catch((error) => message(`cannot load styles: ${error}`, true));
