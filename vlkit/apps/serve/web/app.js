// vlkit playground: plain JS, no dependencies. Chats through POST /v1/chat/completions with stream: true,
// reading the SSE stream with fetch + ReadableStream; draws grounding boxes ([0,1000) coordinates) on the image.
"use strict";

const $ = (id) => document.getElementById(id);
const state = { image: null, imageSent: false, messages: [], busy: false, boxes: [] };

function headers() {
  const h = { "Content-Type": "application/json" };
  const key = $("api-key").value.trim();
  if (key) h["Authorization"] = "Bearer " + key;
  return h;
}

function setStatus(text) { $("status").textContent = text; }

function addMessage(role, text, imageUrl) {
  const div = document.createElement("div");
  div.className = "msg " + role;
  if (imageUrl) {
    const img = document.createElement("img");
    img.src = imageUrl;
    div.appendChild(img);
  }
  const span = document.createElement("span");
  span.className = "text";
  span.textContent = text;
  div.appendChild(span);
  $("log").appendChild(div);
  $("log").scrollTop = $("log").scrollHeight;
  return div;
}

// -- the image --------------------------------------------------------------------------------------
function attachFile(file) {
  if (!file || !file.type.startsWith("image/")) { setStatus("not an image: " + (file ? file.type : "nothing")); return; }
  const reader = new FileReader();
  reader.onload = () => setImage(reader.result);
  reader.readAsDataURL(file);
}

function setImage(dataUrl) {
  state.image = dataUrl;
  state.imageSent = false;
  state.boxes = [];
  const img = $("preview");
  img.onload = () => { $("drop-hint").hidden = true; $("stage").hidden = false; drawBoxes(); };
  img.src = dataUrl;
}

function clearImage() {
  state.image = null; state.imageSent = false; state.boxes = [];
  $("preview").removeAttribute("src");
  $("stage").hidden = true; $("drop-hint").hidden = false;
  $("file").value = "";
  drawBoxes();
}

function drawBoxes() {
  const img = $("preview"), canvas = $("overlay");
  const w = img.clientWidth, h = img.clientHeight;
  canvas.width = w; canvas.height = h;
  canvas.style.width = w + "px"; canvas.style.height = h + "px";
  const ctx = canvas.getContext("2d");
  ctx.clearRect(0, 0, w, h);
  const colors = ["#ff2d55", "#30d158", "#0a84ff", "#ffd60a", "#bf5af2"];
  state.boxes.forEach((b, i) => {
    const [x1, y1, x2, y2] = b.box.map((v, k) => v / 1000 * (k % 2 === 0 ? w : h));
    ctx.strokeStyle = colors[i % colors.length];
    ctx.lineWidth = 3;
    ctx.strokeRect(x1, y1, x2 - x1, y2 - y1);
    if (b.phrase) {
      ctx.font = "12px sans-serif";
      ctx.fillStyle = colors[i % colors.length];
      ctx.fillText(b.phrase, x1 + 3, Math.max(12, y1 - 3));
    }
  });
  canvas.dataset.boxes = String(state.boxes.length);
}

// -- chat -------------------------------------------------------------------------------------------
async function send(text) {
  if (state.busy || !text.trim()) return;
  state.busy = true; $("send").disabled = true;
  const content = [];
  let shownImage = null;
  if (state.image && !state.imageSent) {
    content.push({ type: "image_url", image_url: { url: state.image } });
    shownImage = state.image; state.imageSent = true;
  }
  content.push({ type: "text", text });
  state.messages.push({ role: "user", content });
  addMessage("user", text, shownImage);
  const bubble = addMessage("assistant", "");
  const out = bubble.querySelector(".text");
  let answer = "";
  setStatus("generating...");
  try {
    const resp = await fetch("/v1/chat/completions", {
      method: "POST", headers: headers(),
      body: JSON.stringify({
        messages: state.messages, stream: true, stream_options: { include_usage: true },
        temperature: parseFloat($("temperature").value || "0"), max_tokens: parseInt($("max-tokens").value || "128", 10),
      }),
    });
    if (!resp.ok) {
      const body = await resp.json().catch(() => ({}));
      throw new Error((body.error && body.error.message) || ("HTTP " + resp.status));
    }
    const reader = resp.body.getReader();
    const decoder = new TextDecoder();
    let buffer = "", finish = null, usage = null;
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += decoder.decode(value, { stream: true });
      let cut;
      while ((cut = buffer.indexOf("\n\n")) >= 0) {
        const event = buffer.slice(0, cut); buffer = buffer.slice(cut + 2);
        for (const line of event.split("\n")) {
          if (!line.startsWith("data: ")) continue;
          const data = line.slice(6);
          if (data === "[DONE]") continue;
          const msg = JSON.parse(data);
          if (msg.error) throw new Error(msg.error.message);
          if (msg.usage) usage = msg.usage;
          for (const choice of msg.choices || []) {
            const delta = choice.delta || {};
            if (delta.content) { answer += delta.content; out.textContent = answer; }
            if (delta.boxes && delta.boxes.length) { state.boxes = delta.boxes; drawBoxes(); }
            if (choice.finish_reason) finish = choice.finish_reason;
          }
        }
      }
    }
    state.messages.push({ role: "assistant", content: answer });
    bubble.dataset.done = "1";
    setStatus("done (" + finish + (usage ? ", " + usage.prompt_tokens + " prompt + " + usage.completion_tokens + " tokens" : "") + ")");
  } catch (err) {
    bubble.className = "msg error";
    out.textContent = "error: " + err.message;
    bubble.dataset.done = "1";
    state.messages.pop();  // the failed question is not part of the conversation
    setStatus("");
  } finally {
    state.busy = false; $("send").disabled = false;
  }
}

// -- image generation -------------------------------------------------------------------------------
async function generateImage() {
  const prompt = $("gen-prompt").value.trim();
  if (!prompt) return;
  setStatus("generating an image...");
  try {
    const resp = await fetch("/v1/images/generations", {
      method: "POST", headers: headers(), body: JSON.stringify({ prompt, response_format: "b64_json" }),
    });
    const body = await resp.json();
    if (!resp.ok) throw new Error(body.error ? body.error.message : "HTTP " + resp.status);
    const img = document.createElement("img");
    img.src = "data:image/png;base64," + body.data[0].b64_json;
    img.alt = prompt;
    $("gen-output").replaceChildren(img);
    setStatus("");
  } catch (err) { setStatus("error: " + err.message); }
}

async function loadModel() {
  try {
    const resp = await fetch("/v1/models", { headers: headers() });
    if (!resp.ok) { setStatus("set the API key to use this server"); return; }
    const model = (await resp.json()).data[0];
    $("model-name").textContent = model.id;
    $("gen-panel").hidden = !(model.capabilities && model.capabilities.image_generation);
  } catch (err) { setStatus("server not reachable: " + err.message); }
}

// -- wiring -----------------------------------------------------------------------------------------
$("file").addEventListener("change", (e) => attachFile(e.target.files[0]));
$("clear-image").addEventListener("click", clearImage);
document.addEventListener("paste", (e) => {
  for (const item of e.clipboardData ? e.clipboardData.items : []) {
    if (item.kind === "file" && item.type.startsWith("image/")) { attachFile(item.getAsFile()); e.preventDefault(); return; }
  }
});
const drop = $("drop");
drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
drop.addEventListener("dragleave", () => drop.classList.remove("over"));
drop.addEventListener("drop", (e) => { e.preventDefault(); drop.classList.remove("over"); attachFile(e.dataTransfer.files[0]); });
window.addEventListener("resize", drawBoxes);
$("composer").addEventListener("submit", (e) => { e.preventDefault(); const t = $("prompt").value; $("prompt").value = ""; send(t); });
$("prompt").addEventListener("keydown", (e) => {
  if (e.key === "Enter" && !e.shiftKey) { e.preventDefault(); $("composer").requestSubmit(); }
});
$("reset").addEventListener("click", () => { state.messages = []; state.imageSent = false; $("log").replaceChildren(); setStatus(""); });
$("gen-button").addEventListener("click", generateImage);
$("api-key").value = localStorage.getItem("vlkit-api-key") || "";
$("api-key").addEventListener("change", () => { localStorage.setItem("vlkit-api-key", $("api-key").value); loadModel(); });
loadModel();
