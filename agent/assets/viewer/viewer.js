// anoncam's live viewer: subscribes to one camera's topics over MQTT over WebSockets (MQTT.js) and shows the
// anonymized frames with their face boxes, each face's emotion, and a timeline of the last minute.
// It reads only what the camera published; the topics and payloads are those of docs/mqtt.md, the page's
// settings those of `anoncam view` (agent/commands/view.py) or of the query string (?url=ws://…&base=lab/door).
"use strict";
(() => {
  const EMOTIONS = ["angry", "disgust", "fear", "happy", "neutral", "sad", "surprise"];
  const COLORS = {angry: "#ff453a", disgust: "#8fd14f", fear: "#bf5af2", happy: "#ffd60a", neutral: "#98989d",
                  sad: "#0a84ff", surprise: "#ff9f0a"};
  const BOX = {replaced: "#34c759", held: "#ffd60a", covered: "#ff9f0a"};
  const WINDOW_S = 60;
  const RATE_WINDOW_S = 5;
  const $ = (id) => document.getElementById(id);

  const state = {
    framesShown: 0, frameId: null, meta: null, history: [], arrivals: [], lastFrame: null, sawFrame: false,
    next: null, drawing: false, client: null, settings: null, protocol: 5, connectedOnce: false,
  };
  window.anoncamViewer = state;  // read by the browser test and handy in the console

  // ---- settings: query string, then what `anoncam view` serves, then the page's own host ----
  async function loadSettings() {
    const query = new URLSearchParams(location.search);
    let served = {};
    try {
      const reply = await fetch("config.json", {cache: "no-store"});
      if (reply.ok) served = await reply.json();
    } catch (err) { /* a plain static copy of the page has no config.json */ }
    // By default the page reaches the broker through the bridge of the server it came from.
    const bridge = served.bridge ? `${location.protocol === "https:" ? "wss" : "ws"}://${location.host}${served.bridge}` : "";
    const url = query.get("url") || served.url || bridge || `ws://${location.hostname || "localhost"}:9001`;
    const base = (query.get("base") || served.base || "anoncam/camera").replace(/\/+$/, "");
    return {url, base, username: query.get("username") || served.username || "", password: "",
            needsPassword: Boolean(served.needs_password)};
  }

  function showSettings(settings) {
    $("url").value = settings.url;
    $("base").value = settings.base;
    $("username").value = settings.username;
    $("camera").textContent = settings.base.split("/").pop();
  }

  // ---- MQTT ----
  const protocolName = () => (state.protocol === 5 ? "5" : "3.1.1");

  function connect(settings) {
    if (state.client) state.client.end(true);
    state.settings = settings;
    setBadge("connection", "unknown", `broker: connecting (MQTT ${protocolName()})`);
    const client = mqtt.connect(settings.url, {
      protocolVersion: state.protocol, clean: true, reconnectPeriod: 2000, connectTimeout: 8000,
      clientId: "anoncam-viewer-" + Math.random().toString(16).slice(2, 10),
      username: settings.username || undefined, password: settings.password || undefined,
    });
    state.client = client;
    client.on("connect", () => {
      state.connectedOnce = true;
      setBadge("connection", "ok", `broker: connected (MQTT ${protocolName()})`);
      document.body.dataset.state = "connected";
      const topics = ["frame", "meta", "availability", "stats"].map((leaf) => `${settings.base}/${leaf}`);
      client.subscribe(topics, {qos: 0}, (err) => {
        if (err) setBadge("connection", "bad", `broker: subscribe refused (${err.message})`);
      });
    });
    client.on("message", (topic, payload, packet) => {
      try { onMessage(topic.slice(settings.base.length + 1), payload, packet); } catch (err) { console.error(err); }
    });
    // A broker that speaks only MQTT 3.1.1 refuses version 5 (CONNACK code 1), or closes the connection on it
    // without a word (amqtt): either way, connect again with 3.1.1.
    const retryWith311 = () => {
      state.protocol = 4;
      connect(settings);
    };
    const firstTryWith5 = () => client === state.client && state.protocol === 5 && !state.connectedOnce;
    let refused = false;
    client.on("close", () => {
      if (firstTryWith5() && !refused) retryWith311();
    });
    client.on("reconnect", () => setBadge("connection", "bad", "broker: reconnecting"));
    client.on("offline", () => setBadge("connection", "bad", "broker: offline"));
    client.on("error", (err) => {
      refused = true;
      if (firstTryWith5() && (err.code === 1 || /protocol/i.test(err.message))) {
        retryWith311();
        return;
      }
      const hint = err.code === 4 || err.code === 5 || err.code === 134 || err.code === 135
        ? " (check user and password)" : "";
      setBadge("connection", "bad", `broker: ${err.message}${hint}`);
    });
  }

  function userProperty(packet, name) {
    const props = packet && packet.properties && packet.properties.userProperties;
    if (!props || props[name] === undefined) return null;
    const value = Array.isArray(props[name]) ? props[name][0] : props[name];
    const number = Number(value);
    return Number.isFinite(number) ? number : null;
  }

  function onMessage(leaf, payload, packet) {
    if (leaf === "frame") {
      // A frame is published before its meta, on one connection, so its meta is the next one to arrive.
      state.lastFrame = {jpeg: payload, frameId: userProperty(packet, "frame_id")};
      state.sawFrame = true;
    } else if (leaf === "meta") {
      const meta = JSON.parse(new TextDecoder().decode(payload));
      record(meta);
      const frame = state.lastFrame;
      if (frame && (frame.frameId === null || frame.frameId === meta.frame_id)) {
        state.lastFrame = null;
        render(frame.jpeg, meta);
      } else if (!state.sawFrame) {
        render(null, meta);  // mqtt.publish_frames: false, metadata only
      }
    } else if (leaf === "availability") {
      const text = new TextDecoder().decode(payload);
      setBadge("availability", text === "online" ? "ok" : "bad", `camera: ${text}`);
    } else if (leaf === "stats") {
      showStats(JSON.parse(new TextDecoder().decode(payload)));
    }
  }

  // ---- the frame ----
  function render(jpeg, meta) {
    state.next = {jpeg, meta};
    if (!state.drawing) drainRenders();
  }

  async function drainRenders() {
    // Decoding is asynchronous: when frames come faster than they decode, only the newest is drawn.
    state.drawing = true;
    while (state.next) {
      const {jpeg, meta} = state.next;
      state.next = null;
      let bitmap = null;
      if (jpeg) {
        try {
          bitmap = await createImageBitmap(new Blob([jpeg], {type: "image/jpeg"}));
        } catch (err) {
          console.warn("undecodable frame", err);
          continue;
        }
      }
      drawFrame(bitmap, meta);
      showFaces(meta);
    }
    state.drawing = false;
  }

  function faceKind(face) {
    if (face.held) return "held";
    return face.replaced === false ? "covered" : "replaced";
  }

  function drawFrame(bitmap, meta) {
    const canvas = $("frame");
    const width = bitmap ? bitmap.width : meta.width;
    const height = bitmap ? bitmap.height : meta.height;
    if (canvas.width !== width || canvas.height !== height) { canvas.width = width; canvas.height = height; }
    const ctx = canvas.getContext("2d");
    if (bitmap) {
      ctx.drawImage(bitmap, 0, 0);
      bitmap.close();
    } else {
      ctx.fillStyle = "#25292e";
      ctx.fillRect(0, 0, width, height);
      label(ctx, "metadata only: this camera publishes no frames", 12, 28, "#98989d", width);
    }
    const line = Math.max(2, Math.round(width / 320));
    for (const box of meta.masked_regions || []) drawBox(ctx, box, BOX.covered, false, "covered", line, width);
    for (const face of meta.faces || []) {
      const kind = faceKind(face);
      const emotion = face.emotion ? `${face.emotion.label} ${Math.round(100 * face.emotion.scores[face.emotion.label])}%` : "";
      const name = face.track_id === null || face.track_id === undefined ? "" : `#${face.track_id} `;
      drawBox(ctx, face.box, BOX[kind], kind === "held", (name + emotion).trim() || kind, line, width);
    }
    if (meta.status === "masked") label(ctx, `masked (${meta.reason || "fail-closed"})`, 12, 28, BOX.covered, width);
    state.framesShown += 1;
    state.frameId = meta.frame_id === undefined ? null : meta.frame_id;
    state.meta = meta;
    document.body.dataset.framesShown = String(state.framesShown);
    canvas.dataset.frameId = String(state.frameId);
    $("waiting").hidden = true;
    const when = meta.timestamp ? new Date(meta.timestamp * 1000).toLocaleTimeString() : "";
    const count = (meta.faces || []).length + (meta.masked_regions || []).length;
    $("caption").textContent = `frame ${state.frameId ?? "?"}  ·  ${when}  ·  ${width}×${height}  ·  ` +
      `${count} face${count === 1 ? "" : "s"}`;
  }

  function drawBox(ctx, box, color, dashed, text, line, width) {
    const [x0, y0, x1, y1] = box;
    ctx.save();
    ctx.strokeStyle = color;
    ctx.lineWidth = line;
    if (dashed) ctx.setLineDash([4 * line, 3 * line]);
    ctx.strokeRect(x0, y0, x1 - x0, y1 - y0);
    ctx.restore();
    label(ctx, text, x0, Math.max(y0 - line, 14 + line), color, width, line);
  }

  function label(ctx, text, x, y, color, width, line = 2) {
    const size = Math.max(12, Math.round(width / 55));
    ctx.save();
    ctx.font = `600 ${size}px system-ui, sans-serif`;
    const w = ctx.measureText(text).width + 8;
    const left = Math.min(Math.max(0, x - line / 2), width - w);
    ctx.fillStyle = color;
    ctx.fillRect(left, y - size - 4, w, size + 6);
    ctx.fillStyle = "#111";
    ctx.fillText(text, left + 4, y - 3);
    ctx.restore();
  }

  // ---- the faces panel ----
  function showFaces(meta) {
    const list = $("faces");
    list.replaceChildren();
    const faces = meta.faces || [];
    for (const face of faces) list.appendChild(faceItem(face));
    for (const box of meta.masked_regions || []) {
      const item = document.createElement("li");
      item.innerHTML = `<div class="face-title"><span>covered face</span><span class="kind">no mesh: covered</span></div>`;
      item.title = `box ${box.map((v) => Math.round(v)).join(", ")}`;
      list.appendChild(item);
    }
    $("no-faces").hidden = faces.length + (meta.masked_regions || []).length > 0;
  }

  function faceItem(face) {
    const item = document.createElement("li");
    item.className = "face";
    const title = document.createElement("div");
    title.className = "face-title";
    const name = document.createElement("span");
    const id = face.track_id === null || face.track_id === undefined ? "face" : `face #${face.track_id}`;
    name.textContent = face.emotion ? `${id}: ${face.emotion.label}` : id;
    name.className = "emotion-label";
    const kind = document.createElement("span");
    kind.className = "kind";
    const pose = face.head_pose ? `yaw ${Math.round(face.head_pose.yaw)}°` : "";
    kind.textContent = [faceKind(face), pose].filter(Boolean).join(" · ");
    title.append(name, kind);
    item.appendChild(title);
    if (!face.emotion) {
      const note = document.createElement("div");
      note.className = "caption";
      note.textContent = face.missing ? `not computed: ${face.missing.join(", ")}` : "expression analysis is off";
      item.appendChild(note);
      return item;
    }
    for (const emotion of EMOTIONS) {
      const score = face.emotion.scores[emotion] || 0;
      const bar = document.createElement("div");
      bar.className = "bar";
      bar.innerHTML = `<span>${emotion}</span><span class="track"><span class="fill"></span></span><span class="pct"></span>`;
      bar.querySelector(".fill").style.cssText = `display:block;width:${(100 * score).toFixed(1)}%;background:${COLORS[emotion]}`;
      bar.querySelector(".pct").textContent = `${Math.round(100 * score)}%`;
      item.appendChild(bar);
    }
    return item;
  }

  // ---- the timeline ----
  function record(meta) {
    const t = meta.timestamp || Date.now() / 1000;
    const faces = meta.faces || [];
    const scored = faces.filter((f) => f.emotion);
    const means = {};
    for (const emotion of EMOTIONS) {
      means[emotion] = scored.length ? scored.reduce((s, f) => s + (f.emotion.scores[emotion] || 0), 0) / scored.length : null;
    }
    state.history.push({t, faces: faces.length + (meta.masked_regions || []).length, means});
    while (state.history.length && state.history[0].t < t - WINDOW_S) state.history.shift();
    const now = performance.now() / 1000;
    state.arrivals.push(now);
    while (state.arrivals.length && state.arrivals[0] < now - RATE_WINDOW_S) state.arrivals.shift();
  }

  function drawTimeline() {
    const canvas = $("timeline");
    const ratio = window.devicePixelRatio || 1;
    const cssWidth = canvas.clientWidth || 1200;
    const cssHeight = canvas.clientHeight || 170;
    if (canvas.width !== Math.round(cssWidth * ratio)) {
      canvas.width = Math.round(cssWidth * ratio);
      canvas.height = Math.round(cssHeight * ratio);
    }
    const ctx = canvas.getContext("2d");
    ctx.setTransform(ratio, 0, 0, ratio, 0, 0);
    ctx.clearRect(0, 0, cssWidth, cssHeight);
    const left = 34, right = cssWidth - 10, top = 10, scoreBottom = cssHeight - 52, countTop = cssHeight - 40,
      countBottom = cssHeight - 18;
    ctx.font = "11px system-ui, sans-serif";
    ctx.fillStyle = "#9aa0a6";
    ctx.strokeStyle = "#30363d";
    ctx.lineWidth = 1;
    for (const v of [0, 0.5, 1]) {
      const y = scoreBottom - v * (scoreBottom - top);
      ctx.beginPath(); ctx.moveTo(left, y); ctx.lineTo(right, y); ctx.stroke();
      ctx.fillText(`${Math.round(v * 100)}%`, 2, y + 4);
    }
    ctx.fillText("faces", 2, countBottom - 4);
    const history = state.history;
    if (!history.length) return;
    const tMax = history[history.length - 1].t;
    const x = (t) => right - (tMax - t) / WINDOW_S * (right - left);
    for (const s of [0, 15, 30, 45, 60]) ctx.fillText(s ? `-${s}s` : "now", x(tMax - s) - (s ? 12 : 22), cssHeight - 3);
    const maxCount = Math.max(1, ...history.map((h) => h.faces));
    ctx.fillStyle = "#5f6670";
    for (let i = 0; i < history.length; i++) {
      const next = i + 1 < history.length ? history[i + 1].t : history[i].t + 1 / 15;
      const h = history[i].faces / maxCount * (countBottom - countTop);
      ctx.fillRect(x(history[i].t), countBottom - h, Math.max(1, x(next) - x(history[i].t)), h);
    }
    ctx.fillStyle = "#9aa0a6";
    ctx.fillText(String(maxCount), right - 12, countTop - 2);
    ctx.lineWidth = 2;
    for (const emotion of EMOTIONS) {
      ctx.strokeStyle = COLORS[emotion];
      ctx.beginPath();
      let pen = false;
      for (const h of history) {
        const v = h.means[emotion];
        if (v === null) { pen = false; continue; }
        const px = x(h.t), py = scoreBottom - v * (scoreBottom - top);
        if (pen) ctx.lineTo(px, py); else ctx.moveTo(px, py);
        pen = true;
      }
      ctx.stroke();
    }
  }

  function showLegend() {
    $("window-s").textContent = String(WINDOW_S);
    const legend = $("legend");
    const entries = EMOTIONS.map((emotion) => [COLORS[emotion], emotion]);
    entries.push(["#5f6670", "faces (the lines: each emotion's mean score over the faces of a frame)"]);
    for (const [color, text] of entries) {
      const item = document.createElement("span");
      const swatch = document.createElement("i");
      swatch.style.background = color;  // set through the CSSOM: the page's CSP allows no inline styles
      item.append(swatch, text);
      legend.appendChild(item);
    }
  }

  // ---- header figures ----
  function setBadge(id, kind, text) {
    const el = $(id);
    el.className = `badge ${kind}`;
    el.textContent = text;
  }

  function showStats(stats) {
    const frames = stats.frames || {};
    const failed = (stats.fail_closed || {}).total || 0;
    const latency = stats.stage_ms && stats.stage_ms.total !== undefined ? ` · ${Math.round(stats.stage_ms.total)} ms/frame` : "";
    $("stats").textContent = `camera: ${(stats.fps_out || 0).toFixed(1)} fps out${latency} · sent ${frames.sent ?? "?"}` +
      ` · fail-closed ${failed}`;
  }

  function tick() {
    const rate = state.arrivals.length > 1 ? (state.arrivals.length - 1) / RATE_WINDOW_S : 0;
    $("rate").textContent = state.framesShown ? `here: ${rate.toFixed(1)} fps` : "";
    drawTimeline();
  }

  async function start() {
    showLegend();
    const settings = await loadSettings();
    showSettings(settings);
    $("settings-toggle").addEventListener("click", () => {
      const form = $("settings");
      form.hidden = !form.hidden;
      $("settings-toggle").setAttribute("aria-expanded", String(!form.hidden));
    });
    $("settings").addEventListener("submit", (event) => {
      event.preventDefault();
      const next = {url: $("url").value.trim(), base: $("base").value.trim().replace(/\/+$/, ""),
                    username: $("username").value.trim(), password: $("password").value};
      const query = new URLSearchParams({url: next.url, base: next.base});
      if (next.username) query.set("username", next.username);
      history.replaceState(null, "", `?${query}`);  // the password never goes into the address
      showSettings(next);
      state.protocol = 5;
      state.connectedOnce = false;
      connect(next);
    });
    setInterval(tick, 500);
    if (settings.needsPassword) {
      $("settings").hidden = false;
      setBadge("connection", "unknown", "broker: enter the password");
      $("password").focus();
      return;
    }
    connect(settings);
  }

  start();
})();
