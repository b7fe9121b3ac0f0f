// ledtemp dashboard: one card per device, a live temperature chart per device, the frame counters,
// and a switch per LED that sends a sealed command to the device.
//
// A switch shows the state the device last reported (its LED frame: the POST's confirmed answer
// or the `led` event), never the state asked for: while a command is on its way it says
// "pending", and a command that was refused or not confirmed in time leaves it as it was.
//
// Every name that comes from the server (device, LED, sensor, rejection reason) reaches the page
// through textContent, dataset or setAttribute only, never parsed as markup. The server validates
// names too, and sends `Content-Security-Policy: default-src 'self'`, but the page does not rely
// on either.
"use strict";

(function () {
  const HISTORY_MS = 60 * 60 * 1000; // the chart shows the last hour
  const MAX_POINTS_PER_SENSOR = 4000; // bounds memory if a device reports fast
  const REFETCH_DELAY_MS = 300; // groups the refetches that a burst of new devices causes
  const RETRY_MAX_MS = 30000;
  // The server marks a device offline when it has been silent too long, without an event:
  // reload the device list now and then to show it.
  const RELOAD_DEVICES_MS = 30000;
  // How long a command's outcome ("confirmed", "timed out", "device offline") stays next to the
  // switch.
  const COMMAND_NOTE_MS = 4000;
  const COMMAND_LOG_LENGTH = 10;
  const PALETTE = ["#2563eb", "#dc2626", "#059669", "#d97706", "#7c3aed", "#db2777", "#0891b2"];

  const devicesEl = document.getElementById("devices");
  const emptyEl = document.getElementById("no-devices");
  const liveEl = document.getElementById("live");
  const problemEl = document.getElementById("problem");

  /** @type {Map<string, DeviceCard>} */
  const cards = new Map();

  // The login session's CSRF token (from /auth/session), sent with every POST; null without a
  // login.
  let csrfToken = null;

  // ---- small DOM helpers (text only) ----

  function el(tag, className, text) {
    const node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined) node.textContent = text;
    return node;
  }

  function showProblem(text) {
    if (text) {
      problemEl.textContent = text;
      problemEl.hidden = false;
    } else {
      problemEl.hidden = true;
      problemEl.textContent = "";
    }
  }

  function parseTime(s) {
    const t = Date.parse(s);
    return Number.isFinite(t) ? t : null;
  }

  function relative(ms) {
    if (ms === null) return "never";
    const s = Math.max(0, Math.round((Date.now() - ms) / 1000));
    if (s < 2) return "just now";
    if (s < 60) return s + " s ago";
    const m = Math.floor(s / 60);
    if (m < 60) return m + " min ago";
    const h = Math.floor(m / 60);
    if (h < 48) return h + " h ago";
    return Math.floor(h / 24) + " d ago";
  }

  function formatCelsius(c) {
    return typeof c === "number" && Number.isFinite(c) ? c.toFixed(1) + " \u00b0C" : "\u2013";
  }

  function pad2(n) {
    return String(n).padStart(2, "0");
  }

  // One line per tick, local time: the chart spans an hour, so the date adds nothing (uPlot's
  // default second line with the date overlaps at narrow widths).
  function timeTicks(u, splits, axisIdx, foundSpace, foundIncr) {
    return splits.map((s) => {
      const d = new Date(s * 1000);
      const hm = pad2(d.getHours()) + ":" + pad2(d.getMinutes());
      return foundIncr < 60 ? hm + ":" + pad2(d.getSeconds()) : hm;
    });
  }

  function cssVar(name, fallback) {
    const v = getComputedStyle(document.documentElement).getPropertyValue(name).trim();
    return v || fallback;
  }

  // ---- one device card ----

  class DeviceCard {
    constructor(id) {
      this.id = id;
      this.lastSeen = null;
      this.leds = new Map(); // led name -> {root, state}
      this.temps = new Map(); // sensor name -> {root, value, at, celsius, atMs}
      this.points = new Map(); // sensor name -> Map(at ms -> celsius)
      this.plot = null;
      this.plotSensors = [];
      this.redrawQueued = false;
      this.historyLoaded = false;

      const root = el("article", "card");
      root.dataset.device = id;

      const head = el("header", "card-head");
      const title = el("h2", "device-id", id);
      this.badge = el("span", "badge", "unknown");
      this.badge.dataset.state = "unknown";
      head.append(title, this.badge);

      const seen = el("p", "seen");
      seen.append(document.createTextNode("last seen "));
      this.seenEl = el("time", "last-seen", "never");
      seen.append(this.seenEl);

      const body = el("div", "card-body");
      const ledsBox = el("section", "leds");
      ledsBox.append(el("h3", null, "LEDs"));
      this.ledList = el("ul", "led-list");
      this.noLeds = el("li", "none", "none reported");
      this.ledList.append(this.noLeds);
      ledsBox.append(this.ledList);

      const tempsBox = el("section", "temps");
      tempsBox.append(el("h3", null, "Temperature"));
      this.tempList = el("ul", "temp-list");
      this.noTemps = el("li", "none", "none reported");
      this.tempList.append(this.noTemps);
      tempsBox.append(this.tempList);
      body.append(ledsBox, tempsBox);

      this.chartEl = el("div", "chart");
      this.chartEl.setAttribute("aria-label", "Temperature of " + id + " over the last hour");
      this.chartEmpty = el("p", "chart-empty", "No temperature in the last hour.");
      this.chartEl.append(this.chartEmpty);

      root.append(head, seen, body, this.chartEl);
      this.root = root;

      if (typeof ResizeObserver === "function") {
        this.resizer = new ResizeObserver(() => this.fitPlot());
        this.resizer.observe(this.chartEl);
      }
    }

    update(device) {
      this.setOnline(device.online);
      this.seen(parseTime(device.last_seen));
      for (const led of device.leds || []) this.setLed(led.led, led.on, led.at);
      for (const t of device.temperatures || []) {
        this.setTemperature(t.sensor, t.celsius, t.at, false);
      }
    }

    setOnline(online) {
      const state = online === true ? "online" : online === false ? "offline" : "unknown";
      this.badge.dataset.state = state;
      this.badge.textContent = state;
    }

    seen(ms) {
      if (ms !== null && (this.lastSeen === null || ms > this.lastSeen)) {
        this.lastSeen = ms;
        this.seenEl.setAttribute("datetime", new Date(ms).toISOString());
        this.seenEl.title = new Date(ms).toLocaleString();
      }
      this.tick();
    }

    tick() {
      this.seenEl.textContent = relative(this.lastSeen);
    }

    setLed(name, on, at) {
      let led = this.leds.get(name);
      if (!led) {
        this.noLeds.remove();
        const root = el("li", "led");
        root.dataset.led = name;
        const lamp = el("span", "lamp");
        lamp.setAttribute("aria-hidden", "true");
        const label = el("span", "led-name", name);
        const state = el("span", "led-state");
        const toggle = el("button", "switch");
        toggle.type = "button";
        toggle.setAttribute("role", "switch");
        toggle.setAttribute("aria-label", "LED " + name + " of " + this.id);
        toggle.addEventListener("click", () => this.sendCommand(name));
        const note = el("span", "led-command");
        note.setAttribute("role", "status");
        note.hidden = true;
        root.append(lamp, label, state, toggle, note);
        led = { root, state, toggle, note, atMs: null, on: false, pending: false, noteTimer: null };
        this.leds.set(name, led);
        insertSorted(this.ledList, root, name, "led");
      }
      const atMs = parseTime(at);
      if (led.atMs !== null && atMs !== null && atMs < led.atMs) return; // older than shown
      led.atMs = atMs;
      led.on = on === true;
      led.root.dataset.on = led.on ? "true" : "false";
      led.state.textContent = led.on ? "on" : "off";
      led.toggle.setAttribute("aria-checked", led.on ? "true" : "false");
      led.toggle.title = "Switch " + name + (led.on ? " off" : " on");
    }

    // One click: ask the device for the opposite of the state it last reported, and wait for
    // the server's answer (it comes once the device confirmed, or after the server's time-out).
    async sendCommand(name) {
      const led = this.leds.get(name);
      if (!led || led.pending) return;
      const on = !led.on;
      led.pending = true;
      led.toggle.disabled = true;
      this.showCommand(led, "pending", "pending\u2026", "");
      const url =
        "/api/devices/" + encodeURIComponent(this.id) + "/leds/" + encodeURIComponent(name);
      const headers = { "Content-Type": "application/json", Accept: "application/json" };
      if (csrfToken !== null) headers["X-CSRF-Token"] = csrfToken;
      let outcome = ["refused", "server unreachable", ""];
      try {
        const response = await fetch(url, {
          method: "POST",
          headers,
          body: JSON.stringify({ on }),
        });
        if (response.status === 401) return toLogin();
        const body = await response.json().catch(() => null);
        if (body && typeof body.sequence === "number") rememberAnswer(body);
        if (response.ok && body && body.outcome === "confirmed" && typeof body.on === "boolean") {
          // The state the device reported, at the time its frame arrived.
          this.setLed(name, body.on, body.confirmed_at);
          outcome = ["confirmed", "confirmed", ""];
        } else if (response.status === 504) {
          outcome = ["timed_out", "timed out", "the device did not confirm in time"];
        } else {
          const why = body && typeof body.error === "string" ? body.error : "";
          outcome = ["refused", refusalLabel(response.status, why), why];
        }
      } catch (_) {
        // The network failed: the outcome is unknown here; the device's frame, if any, still
        // arrives through the event stream.
      } finally {
        led.pending = false;
        led.toggle.disabled = false;
      }
      this.showCommand(led, ...outcome);
      loadCommands().catch(() => {});
    }

    // Shows a command's state next to its switch: `pending` until the answer, then the outcome
    // for a few seconds.
    showCommand(led, kind, text, title) {
      clearTimeout(led.noteTimer);
      led.toggle.dataset.command = kind;
      led.note.textContent = text;
      led.note.title = title;
      led.note.hidden = false;
      if (kind === "pending") return;
      led.noteTimer = setTimeout(() => {
        delete led.toggle.dataset.command;
        led.note.hidden = true;
        led.note.textContent = "";
        led.note.title = "";
      }, COMMAND_NOTE_MS);
    }

    setTemperature(sensor, celsius, at, live) {
      let t = this.temps.get(sensor);
      if (!t) {
        this.noTemps.remove();
        const root = el("li", "temp");
        root.dataset.sensor = sensor;
        const swatch = el("span", "swatch");
        swatch.setAttribute("aria-hidden", "true");
        const label = el("span", "sensor-name", sensor);
        const value = el("span", "celsius");
        root.append(swatch, label, value);
        t = { root, value, swatch, atMs: null };
        this.temps.set(sensor, t);
        insertSorted(this.tempList, root, sensor, "sensor");
        this.colourSwatches();
      }
      const atMs = parseTime(at);
      if (t.atMs === null || atMs === null || atMs >= t.atMs) {
        t.atMs = atMs;
        t.root.dataset.celsius = String(celsius);
        t.value.textContent = formatCelsius(celsius);
      }
      if (atMs !== null && typeof celsius === "number") this.addPoint(sensor, atMs, celsius);
      if (live) this.seen(atMs);
    }

    colourSwatches() {
      const names = Array.from(this.temps.keys()).sort();
      names.forEach((name, i) => {
        // A CSSOM property set from script, which the CSP allows (it forbids style attributes
        // in markup).
        this.temps.get(name).swatch.style.backgroundColor = PALETTE[i % PALETTE.length];
      });
    }

    addPoint(sensor, atMs, celsius) {
      let series = this.points.get(sensor);
      if (!series) {
        series = new Map();
        this.points.set(sensor, series);
      }
      series.set(atMs, celsius);
      if (series.size > MAX_POINTS_PER_SENSOR) {
        const oldest = Math.min(...series.keys());
        series.delete(oldest);
      }
      this.queueRedraw();
    }

    queueRedraw() {
      if (this.redrawQueued) return;
      this.redrawQueued = true;
      requestAnimationFrame(() => {
        this.redrawQueued = false;
        this.redraw();
      });
    }

    // uPlot wants one shared x array (seconds) and one y array per series, null where a sensor
    // has no point at that instant.
    chartData() {
      const cutoff = Date.now() - HISTORY_MS;
      const sensors = Array.from(this.points.keys()).sort();
      const xs = new Set();
      for (const series of this.points.values()) {
        for (const at of series.keys()) {
          if (at < cutoff) series.delete(at);
          else xs.add(at);
        }
      }
      const times = Array.from(xs).sort((a, b) => a - b);
      const data = [times.map((t) => t / 1000)];
      for (const s of sensors) {
        const series = this.points.get(s);
        data.push(times.map((t) => (series.has(t) ? series.get(t) : null)));
      }
      return { sensors, data, count: times.length };
    }

    redraw() {
      const { sensors, data, count } = this.chartData();
      this.chartEmpty.hidden = count > 0;
      this.chartEl.dataset.points = String(count);
      if (typeof uPlot !== "function") {
        showProblem("The chart library did not load; readings are still shown.");
        return;
      }
      if (count === 0) {
        if (this.plot) {
          this.plot.destroy();
          this.plot = null;
        }
        return;
      }
      const sameSeries =
        this.plot && sensors.length === this.plotSensors.length &&
        sensors.every((s, i) => s === this.plotSensors[i]);
      if (sameSeries) {
        this.plot.setData(data);
        return;
      }
      if (this.plot) this.plot.destroy();
      this.plotSensors = sensors;
      this.plot = new uPlot(this.plotOptions(sensors), data, this.chartEl);
    }

    plotOptions(sensors) {
      // The legend shows the reading under the cursor; away from the chart, the latest one
      // (a bare placeholder there looked broken).
      const legendValue = (u, v, si) => {
        if (v !== null && v !== undefined) return v.toFixed(2) + " \u00b0C";
        const values = u.data[si] || [];
        for (let i = values.length - 1; i >= 0; i--) {
          if (values[i] !== null && values[i] !== undefined) {
            return "latest " + values[i].toFixed(2) + " \u00b0C";
          }
        }
        return "no reading yet";
      };
      const axisColour = cssVar("--muted", "#64748b");
      const gridColour = cssVar("--grid", "rgba(100,116,139,0.2)");
      const axis = {
        stroke: axisColour,
        grid: { stroke: gridColour, width: 1 },
        ticks: { stroke: gridColour, width: 1 },
      };
      return {
        width: this.chartWidth(),
        height: 180,
        legend: { show: true },
        cursor: { drag: { x: false, y: false } },
        scales: { x: { time: true } },
        axes: [
          Object.assign({}, axis, { values: timeTicks, size: 32 }),
          Object.assign({}, axis, { values: (u, vals) => vals.map((v) => v + "\u00b0") }),
        ],
        series: [{}].concat(
          sensors.map((s, i) => ({
            label: s, // uPlot writes labels with textContent
            stroke: PALETTE[i % PALETTE.length],
            width: 2,
            spanGaps: true,
            points: { show: false },
            value: legendValue,
          })),
        ),
      };
    }

    chartWidth() {
      return Math.max(200, Math.floor(this.chartEl.clientWidth || 300));
    }

    fitPlot() {
      if (this.plot) this.plot.setSize({ width: this.chartWidth(), height: 180 });
    }

    async loadHistory() {
      const since = new Date(Date.now() - HISTORY_MS).toISOString();
      const url =
        "/api/devices/" + encodeURIComponent(this.id) + "/temperature?since=" +
        encodeURIComponent(since);
      const body = await getJson(url);
      for (const p of body.points || []) {
        const atMs = parseTime(p.at);
        if (atMs !== null && typeof p.celsius === "number") {
          this.addPoint(p.sensor, atMs, p.celsius);
        }
      }
      this.historyLoaded = true;
      this.root.dataset.history = "loaded";
      this.queueRedraw();
    }
  }

  // What a refused command says next to its switch; the server's reason is its title.
  function refusalLabel(status, why) {
    if (status === 409) return /offline/.test(why) ? "device offline" : "device not ready, try again";
    if (status === 404) return "unknown LED";
    if (status === 403) return "refused: reload the page";
    if (status === 503) return "cannot send now";
    return "failed (" + status + ")";
  }

  // Keeps list items in name order, so a card does not reshuffle as updates arrive.
  function insertSorted(list, item, name, key) {
    for (const other of list.children) {
      const otherName = other.dataset[key];
      if (otherName !== undefined && otherName > name) {
        list.insertBefore(item, other);
        return;
      }
    }
    list.append(item);
  }

  function cardFor(id) {
    let card = cards.get(id);
    if (!card) {
      card = new DeviceCard(id);
      cards.set(id, card);
      emptyEl.hidden = true;
      const after = Array.from(cards.keys()).sort().find((other) => other > id);
      if (after !== undefined) devicesEl.insertBefore(card.root, cards.get(after).root);
      else devicesEl.append(card.root);
      card.loadHistory().catch((e) => showProblem("Could not load history: " + e.message));
    }
    return card;
  }

  // ---- HTTP ----

  function toLogin() {
    window.location.assign("/login");
  }

  async function getJson(url) {
    const response = await fetch(url, { headers: { Accept: "application/json" } });
    // The session ended (logout elsewhere, expiry): log in again.
    if (response.status === 401) toLogin();
    if (!response.ok) throw new Error(url.split("?")[0] + " answered " + response.status);
    return response.json();
  }

  // ---- login: a Log out button when the server asks for one ----

  async function setUpLogout() {
    const session = await getJson("/auth/session");
    if (!session.auth || typeof session.csrf !== "string") return;
    csrfToken = session.csrf;
    const button = document.getElementById("logout");
    button.hidden = false;
    button.addEventListener("click", async () => {
      button.disabled = true;
      try {
        // A POST with the session's CSRF token: a GET, or another site, cannot log anyone out.
        await fetch("/auth/logout", { method: "POST", headers: { "X-CSRF-Token": session.csrf } });
      } finally {
        toLogin();
      }
    });
  }

  async function loadDevices() {
    const devices = await getJson("/api/devices");
    for (const device of devices) {
      if (typeof device.id === "string") cardFor(device.id).update(device);
    }
    document.body.dataset.devices = "loaded";
  }

  async function loadStats() {
    showStats(await getJson("/api/stats"));
  }

  function refresh() {
    return Promise.all([loadDevices(), loadStats(), loadAlerts(), loadCommands()]).then(
      () => showProblem(null),
      (e) => showProblem("Could not reach the server: " + e.message),
    );
  }

  let refetchTimer = null;
  function refetchDevicesSoon() {
    if (refetchTimer !== null) return;
    refetchTimer = setTimeout(() => {
      refetchTimer = null;
      loadDevices().catch((e) => showProblem("Could not load devices: " + e.message));
    }, REFETCH_DELAY_MS);
  }

  // ---- the Frames panel ----

  const REASON_LABELS = Object.freeze({
    bad_tag: "bad tag",
    replay: "replay",
    unknown_device: "unknown device",
    malformed: "malformed",
    oversize: "oversize",
    revoked: "revoked",
    limit: "limit",
    stale_will: "stale will",
    redelivered: "redelivered",
  });

  function showStats(stats) {
    if (!stats || typeof stats !== "object") return;
    // The insecure plaintext teaching mode (--insecure-plaintext): say so in red.
    const insecure = stats.insecure_plaintext === true;
    document.getElementById("insecure").hidden = !insecure;
    for (const tagline of document.querySelectorAll(".tagline")) tagline.hidden = insecure;
    setNumber(document.getElementById("accepted"), stats.accepted);
    const rejected = stats.rejected || {};
    const list = document.getElementById("rejected");
    for (const [reason, count] of Object.entries(rejected)) {
      let row = Array.from(list.children).find((r) => r.dataset.reason === reason);
      if (!row) {
        // A reason this page does not know yet: still shown, as text.
        row = el("div", "count");
        row.dataset.reason = reason;
        const label = Object.hasOwn(REASON_LABELS, reason)
          ? REASON_LABELS[reason]
          : reason.replace(/_/g, " ");
        row.append(el("dt", null, label));
        row.append(el("dd", "number", "0"));
        list.append(row);
      }
      setNumber(row.querySelector(".number"), count);
    }
    const broker = document.getElementById("broker");
    const state =
      stats.broker_connected === true ? "connected" :
      stats.broker_connected === false ? "disconnected" : "unknown";
    broker.dataset.state = state;
    broker.textContent = state;
    // A failing database: frames wait at the broker until it takes commits again.
    const store = document.getElementById("store");
    const storeState =
      stats.store_ok === true ? "ok" : stats.store_ok === false ? "failing" : "unknown";
    store.dataset.state = storeState;
    store.textContent = storeState;
  }

  function setNumber(node, n) {
    if (!node || typeof n !== "number") return;
    node.textContent = n.toLocaleString("en-US");
    node.closest(".count").dataset.nonzero = n > 0 ? "true" : "false";
  }

  // ---- the Alerts panel ----

  // Also refreshed by the `alert` event; the poll keeps times and counters current.
  const RELOAD_ALERTS_MS = 10000;

  function alertItem(alert) {
    const key = (alert && alert.key) || {};
    const state = typeof alert.state === "string" ? alert.state : "unknown";
    const item = el("li", "alert");
    item.dataset.state = state;
    const subject = typeof key.subject === "string" ? "/" + key.subject : "";
    const what = String(key.device) + subject + " \u00b7 " + String(key.rule);
    item.append(el("span", "alert-what", what));
    const at =
      typeof alert.resolved_ms === "number" ? alert.resolved_ms :
      typeof alert.fired_ms === "number" ? alert.fired_ms :
      typeof alert.since_ms === "number" ? alert.since_ms : null;
    item.append(el("span", "alert-when", state + " " + relative(at)));
    return item;
  }

  function notifierItem(n) {
    const item = el("li", "notifier");
    item.append(el("span", "notifier-name", String(n.name) + " (" + String(n.kind) + ")"));
    const counts = ["sent", "failed", "retried", "capped"]
      .map((k) => k + " " + (typeof n[k] === "number" ? n[k] : 0))
      .join(", ");
    item.append(el("span", "notifier-counts", counts));
    const failing = typeof n.last_error === "string";
    item.dataset.failing = failing ? "true" : "false";
    if (failing) {
      item.append(el("span", "notifier-error", "last failure: " + n.last_error));
    }
    return item;
  }

  function fillList(id, emptyId, items, make) {
    const list = document.getElementById(id);
    const shown = Array.isArray(items) ? items.filter((x) => x && typeof x === "object") : [];
    list.replaceChildren(...shown.map(make));
    document.getElementById(emptyId).hidden = shown.length > 0;
  }

  function showAlerts(alerts) {
    if (!alerts || typeof alerts !== "object") return;
    fillList("alerts-active", "no-alerts", alerts.active, alertItem);
    fillList("alerts-recent", "no-recent", alerts.recent, alertItem);
    fillList("notifiers", "no-notifiers", alerts.notifiers, notifierItem);
    document.body.dataset.alerts = "loaded";
  }

  function loadAlerts() {
    return getJson("/api/alerts").then(showAlerts);
  }

  // ---- the Commands panel: the last LED commands, whoever sent them ----

  const OUTCOME_LABELS = Object.freeze({
    sent: "sent, no answer yet",
    confirmed: "confirmed",
    timed_out: "timed out",
    offline: "device offline",
    not_sent: "not sent",
  });

  // The answers this page got to its own commands. The server answers before its log has the
  // outcome (the log says `sent` for a moment longer): the answer is the same entry, settled.
  const answered = new Map();

  function commandKey(record) {
    return String(record.device) + "\u0000" + String(record.sequence);
  }

  function rememberAnswer(record) {
    answered.set(commandKey(record), record);
    // Only the newest matter: the log settles within a moment.
    if (answered.size > COMMAND_LOG_LENGTH) answered.delete(answered.keys().next().value);
  }

  function commandItem(logged) {
    const known = logged.outcome === "sent" ? answered.get(commandKey(logged)) : undefined;
    const record = known || logged;
    const outcome = typeof record.outcome === "string" ? record.outcome : "unknown";
    const item = el("li", "command");
    item.dataset.outcome = outcome;
    const what =
      String(record.device) + "/" + String(record.led) + " \u2192 " + (record.on ? "on" : "off");
    item.append(el("span", "command-what", what));
    const label = Object.hasOwn(OUTCOME_LABELS, outcome)
      ? OUTCOME_LABELS[outcome]
      : outcome.replace(/_/g, " ");
    const when = relative(parseTime(record.at));
    item.append(el("span", "command-when", label + " \u00b7 " + when + " \u00b7 " + String(record.by)));
    return item;
  }

  async function loadCommands() {
    const log = await getJson("/api/commands?limit=" + COMMAND_LOG_LENGTH);
    fillList("command-log", "no-commands", log, commandItem);
    document.body.dataset.commands = "loaded";
  }

  // ---- the event stream: one for the whole page ----

  function setLive(state) {
    liveEl.dataset.state = state;
    liveEl.textContent = state;
  }

  function parseEvent(e) {
    try {
      return JSON.parse(e.data);
    } catch (_) {
      return null;
    }
  }

  let retryMs = 1000;
  let everOpened = false;

  function connect() {
    const source = new EventSource("/api/events");
    source.addEventListener("open", () => {
      retryMs = 1000;
      setLive("live");
      // Whatever happened while the stream was down: fetch the current state again.
      if (everOpened) {
        refresh();
        for (const card of cards.values()) card.loadHistory().catch(() => {});
      }
      everOpened = true;
    });
    source.addEventListener("error", () => {
      if (source.readyState === EventSource.CLOSED) {
        // The browser gave up (e.g. an HTTP error): retry ourselves, with backoff, unless the
        // session is over.
        setLive("offline");
        source.close();
        fetch("/auth/session").then((r) => r.status === 401 && toLogin(), () => {});
        setTimeout(connect, retryMs);
        retryMs = Math.min(retryMs * 2, RETRY_MAX_MS);
      } else {
        setLive("reconnecting");
      }
    });
    source.addEventListener("temperature", (e) => {
      const d = parseEvent(e);
      if (!d || typeof d.device !== "string") return;
      if (!cards.has(d.device)) return refetchDevicesSoon();
      cards.get(d.device).setTemperature(d.sensor, d.celsius, d.at, true);
    });
    source.addEventListener("led", (e) => {
      const d = parseEvent(e);
      if (!d || typeof d.device !== "string") return;
      if (!cards.has(d.device)) return refetchDevicesSoon();
      const card = cards.get(d.device);
      card.setLed(d.led, d.on, d.at);
      card.seen(parseTime(d.at));
    });
    source.addEventListener("status", (e) => {
      const d = parseEvent(e);
      if (!d || typeof d.device !== "string") return;
      if (!cards.has(d.device)) return refetchDevicesSoon();
      const card = cards.get(d.device);
      card.setOnline(d.online);
      card.seen(parseTime(d.at));
    });
    source.addEventListener("stats", (e) => showStats(parseEvent(e)));
    source.addEventListener("alert", () => {
      loadAlerts().catch((e) => showProblem("Could not load alerts: " + e.message));
    });
  }

  setInterval(() => {
    for (const card of cards.values()) card.tick();
  }, 1000);

  setInterval(() => {
    loadDevices().catch((e) => showProblem("Could not load devices: " + e.message));
  }, RELOAD_DEVICES_MS);

  setInterval(() => {
    loadAlerts().catch((e) => showProblem("Could not load alerts: " + e.message));
    loadCommands().catch((e) => showProblem("Could not load commands: " + e.message));
  }, RELOAD_ALERTS_MS);

  setUpLogout().catch((e) => showProblem("Could not load the session: " + e.message));
  refresh();
  connect();
})();
