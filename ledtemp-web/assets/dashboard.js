// ledtemp dashboard: one card per device, a temperature chart per device over a range the user
// picks (live while the range ends now), the LED changes on the chart's time axis, CSV downloads
// of the shown range, the frame counters, and a switch per LED that sends a sealed command to the
// device.
//
// A switch shows the state the device last reported (its LED frame: the POST's confirmed answer
// or the `led` event), never the state asked for: while a command is on its way it says
// "pending", and a command that was refused or not confirmed in time leaves it as it was.
//
// The chart shows what the server answers for the range: raw readings when there are few enough,
// else per time bucket the mean as the line and the minimum and maximum as a band, so a spike is
// not averaged away. Dragging across the chart zooms in: the zoomed range is asked for again, in
// finer buckets. Live readings and LED changes are added only while the range reaches now; a past
// range, or a zoomed one, stays as the server answered it.
//
// Every name that comes from the server (device, LED, sensor, rejection reason) reaches the page
// through textContent, dataset or setAttribute only, never parsed as markup. The server validates
// names too, and sends `Content-Security-Policy: default-src 'self'`, but the page does not rely
// on either.
"use strict";

(function () {
  const HOUR_MS = 60 * 60 * 1000;
  const DAY_MS = 24 * HOUR_MS;
  // The ranges a card offers, ending now; the first is the default.
  const RANGES = Object.freeze([
    { key: "1h", label: "1 h", ms: HOUR_MS, name: "the last hour" },
    { key: "24h", label: "24 h", ms: DAY_MS, name: "the last 24 hours" },
    { key: "7d", label: "7 d", ms: 7 * DAY_MS, name: "the last 7 days" },
    { key: "30d", label: "30 d", ms: 30 * DAY_MS, name: "the last 30 days" },
  ]);
  // The most points per sensor the chart asks for (the server's own limit): about one per pixel
  // of its width, as more could not be seen.
  const MAX_CHART_POINTS = 1000;
  const MIN_CHART_POINTS = 100;
  const MIN_ZOOM_MS = 10 * 1000; // a narrower drag is a click, not a zoom
  const MAX_POINTS_PER_SENSOR = 4000; // bounds memory if a device reports fast while live
  // A live chart moves on with the clock even when no reading comes.
  const LIVE_REDRAW_MS = 10000;
  const LED_CHANGES_LISTED = 200; // the newest ones, in the list under the timeline
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

  const WEEKDAYS = ["Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat"];
  const MONTHS = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"];

  // Local time, spelled out the same in every browser: "Tue 24 Nov" (with the year when it is not
  // this one), "Tue 24 Nov 12:00:05".
  function formatDay(d) {
    const year = d.getFullYear() === new Date().getFullYear() ? "" : " " + d.getFullYear();
    return WEEKDAYS[d.getDay()] + " " + d.getDate() + " " + MONTHS[d.getMonth()] + year;
  }

  function formatClock(d, seconds) {
    const hm = pad2(d.getHours()) + ":" + pad2(d.getMinutes());
    return seconds ? hm + ":" + pad2(d.getSeconds()) : hm;
  }

  function formatWhen(ms, seconds) {
    const d = new Date(ms);
    return formatDay(d) + " " + formatClock(d, seconds !== false);
  }

  function formatDuration(ms) {
    if (ms < 120 * 1000) return Math.max(1, Math.round(ms / 1000)) + " s";
    if (ms < 2 * HOUR_MS) return Math.round(ms / 60000) + " min";
    if (ms < 2 * DAY_MS) return Math.round(ms / HOUR_MS) + " h";
    return Math.round(ms / DAY_MS) + " d";
  }

  // A `datetime-local` input's value for `ms`, local time, to the minute.
  function localInputValue(ms) {
    const d = new Date(ms);
    return d.getFullYear() + "-" + pad2(d.getMonth() + 1) + "-" + pad2(d.getDate()) + "T" +
      formatClock(d, false);
  }

  // Local time. Within a day, one line per tick: the time. Over more than about a day, the date
  // under the first tick and under each tick that starts a new day (uPlot's default puts a date
  // under every tick, which overlaps at narrow widths); with ticks a day or more apart, the date
  // alone (with its weekday, up to a week apart).
  function timeTicks(u, splits, axisIdx, foundSpace, foundIncr) {
    const span = u.scales.x.max - u.scales.x.min;
    // A date under a tick at the right edge would be cut off (the range label has it).
    const width = u.bbox.width / (window.devicePixelRatio || 1);
    const edge = u.scales.x.max - span * 36 / Math.max(1, width);
    let lastDay = null;
    const labels = splits.map((s) => {
      const d = new Date(s * 1000);
      if (foundIncr >= 7 * 86400) return d.getDate() + " " + MONTHS[d.getMonth()];
      if (foundIncr >= 86400) return WEEKDAYS[d.getDay()] + " " + d.getDate() + " " + MONTHS[d.getMonth()];
      const clock = formatClock(d, foundIncr < 60);
      const day = d.toDateString();
      const newDay = day !== lastDay;
      lastDay = day;
      return span > 20 * 3600 && newDay && s < edge ? clock + "\n" + formatDay(d) : clock;
    });
    // The canvas holds the labels as pixels; the chart's element holds them as text too.
    const chart = u.root.parentElement;
    if (chart) chart.dataset.ticks = labels.join(" | ").replace(/\n/g, " ");
    return labels;
  }

  function multiDay(u) {
    return u.scales.x.max - u.scales.x.min > 20 * 3600;
  }

  // `#rrggbb` with an alpha, for the band under a sensor's line.
  function withAlpha(hex, alpha) {
    const n = parseInt(hex.slice(1), 16);
    return "rgba(" + (n >> 16) + "," + ((n >> 8) & 255) + "," + (n & 255) + "," + alpha + ")";
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
      // What the chart shows. The range picked (one of RANGES, or {key: "custom", since, until}),
      // a zoomed part of it or null, and the window they make: {since, until, live} in ms.
      this.range = RANGES[0];
      this.zoom = null;
      this.window = this.currentWindow();
      // The server's answer for the window, and what came live since. Per sensor, points oldest
      // first: {at, mean, min, max, count} arrays (a raw reading has min = max = mean).
      this.series = new Map();
      this.bucketMs = 0; // 0: raw readings
      this.answeredUntil = 0; // live readings up to here are in the server's answer
      this.ledInitial = new Map(); // led name -> {on, atMs}: its state when the window starts
      this.ledChanges = []; // {led, on, atMs}, oldest first
      this.ledTruncated = false;
      this.ledHistory = "loading"; // "loaded", or "unavailable" when the server would not say
      this.generation = 0; // the newest reload; older answers are dropped
      this.loading = false;
      this.whileLoading = []; // live updates that came during a reload, applied after it
      this.plot = null;
      this.plotShape = "";
      this.redrawQueued = false;
      this.lastRedraw = 0;
      this.listedChanges = "";

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

      const history = el("section", "history");
      history.setAttribute("aria-label", "History of " + id);
      history.append(this.buildTools());
      this.rangeLabel = el("p", "range-label");
      this.chartEl = el("div", "chart");
      this.chartEmpty = el("p", "chart-empty", "No temperature in this range.");
      this.chartEl.append(this.chartEmpty);
      // What is under the chart's cursor: its time, and each LED's state then.
      this.readout = el("p", "cursor-readout");
      history.append(this.rangeLabel, this.chartEl, this.readout, this.buildTimeline());

      root.append(head, seen, body, history);
      this.root = root;
      this.showControls();

      if (typeof ResizeObserver === "function") {
        this.resizer = new ResizeObserver(() => this.fitPlot());
        this.resizer.observe(this.chartEl);
      }
    }

    // The range buttons, the custom range's from/to, "reset zoom" and the CSV links.
    buildTools() {
      const tools = el("div", "chart-tools");
      const ranges = el("div", "ranges");
      ranges.setAttribute("role", "group");
      ranges.setAttribute("aria-label", "Range");
      this.rangeButtons = new Map();
      for (const range of RANGES) {
        const button = el("button", "range", range.label);
        button.type = "button";
        button.dataset.range = range.key;
        button.title = "Show " + range.name + ", live";
        button.addEventListener("click", () => this.chooseRange(range));
        this.rangeButtons.set(range.key, button);
        ranges.append(button);
      }
      const custom = el("button", "range", "from\u2013to");
      custom.type = "button";
      custom.dataset.range = "custom";
      custom.title = "Show a range of your choice";
      custom.setAttribute("aria-expanded", "false");
      custom.addEventListener("click", () => this.toggleCustomForm());
      this.rangeButtons.set("custom", custom);
      ranges.append(custom);

      this.resetButton = el("button", "reset-zoom", "reset zoom");
      this.resetButton.type = "button";
      this.resetButton.title = "Back to the whole range";
      this.resetButton.addEventListener("click", () => this.resetZoom());

      const downloads = el("span", "downloads");
      this.csvTemperature = el("a", "csv", "temperature CSV");
      this.csvTemperature.dataset.kind = "temperature";
      this.csvLeds = el("a", "csv", "LED CSV");
      this.csvLeds.dataset.kind = "leds";
      for (const link of [this.csvTemperature, this.csvLeds]) {
        link.setAttribute("download", "");
        link.title = "Download the shown range as CSV";
        // A live range ends when the link is followed, not when it was last drawn.
        link.addEventListener("click", () => this.updateLinks());
      }
      downloads.append(this.csvTemperature, this.csvLeds);

      this.customForm = el("form", "custom-range");
      this.customForm.hidden = true;
      const input = (label, name) => {
        const wrap = el("label", null, label + " ");
        const field = el("input");
        field.type = "datetime-local";
        field.name = name;
        field.required = true;
        wrap.append(field);
        this.customForm.append(wrap);
        return field;
      };
      this.fromInput = input("from", "from");
      this.toInput = input("to", "to");
      const show = el("button", "show-range", "show");
      show.type = "submit";
      this.customProblem = el("span", "custom-problem");
      this.customProblem.setAttribute("role", "status");
      this.customForm.append(show, this.customProblem);
      this.customForm.addEventListener("submit", (e) => {
        e.preventDefault();
        this.applyCustomForm();
      });

      tools.append(ranges, this.resetButton, downloads, this.customForm);
      return tools;
    }

    // Under the chart, on its time axis: a row per LED with its "on" spans, a line under the
    // chart's cursor, and the list of changes.
    buildTimeline() {
      this.timeline = el("div", "led-timeline");
      this.timelineRows = el("div", "led-rows");
      this.timelineCursor = el("div", "led-cursor");
      this.timelineCursor.setAttribute("aria-hidden", "true");
      this.timelineCursor.hidden = true;
      this.timelineNote = el("p", "led-note");
      this.timelineNote.hidden = true;
      this.changesBox = el("details", "led-changes");
      this.changesSummary = el("summary", null, "LED changes");
      this.changesList = el("ol", "led-change-list");
      this.changesBox.append(this.changesSummary, this.changesList);
      const lanes = el("div", "led-lanes");
      lanes.append(this.timelineRows, this.timelineCursor);
      this.timeline.append(
        lanes,
        this.timelineNote,
        this.changesBox,
      );
      return this.timeline;
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
      // A live chart moves on with the clock, readings or not.
      if (this.window.live && !this.loading && Date.now() - this.lastRedraw > LIVE_REDRAW_MS) {
        this.queueRedraw();
      }
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
      this.addLiveLed(name, led.on, atMs);
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
      this.addLiveReading(sensor, atMs, celsius);
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

    // ---- the range ----

    // {since, until, live, fixed} in ms: the zoomed part, the custom range, or a range ending
    // now. Live: what comes from the event stream joins it (a custom range that ends in the
    // future is live too); fixed: its end does not move with the clock.
    currentWindow() {
      if (this.zoom) {
        return { since: this.zoom.since, until: this.zoom.until, live: false, fixed: true };
      }
      if (this.range.key === "custom") {
        const { since, until } = this.range;
        return { since, until, live: until > Date.now(), fixed: true };
      }
      const until = Date.now();
      return { since: until - this.range.ms, until, live: true, fixed: false };
    }

    chooseRange(range) {
      this.range = range;
      this.zoom = null;
      this.customForm.hidden = true;
      this.reloadOrSay();
    }

    toggleCustomForm() {
      const open = this.customForm.hidden;
      this.customForm.hidden = !open;
      if (open) {
        // Start from what is shown.
        const w = this.currentWindow();
        this.fromInput.value = localInputValue(w.since);
        this.toInput.value = localInputValue(w.until);
        this.fromInput.focus();
      }
      this.showControls();
    }

    applyCustomForm() {
      // A `datetime-local` value has no zone: Date.parse reads it as local time.
      const since = Date.parse(this.fromInput.value);
      const until = Date.parse(this.toInput.value);
      if (!Number.isFinite(since) || !Number.isFinite(until)) {
        this.customProblem.textContent = "Give both times.";
        return;
      }
      if (since >= until) {
        this.customProblem.textContent = "\u201cfrom\u201d must be before \u201cto\u201d.";
        return;
      }
      this.customProblem.textContent = "";
      this.range = { key: "custom", since, until };
      this.zoom = null;
      this.reloadOrSay();
    }

    // Drag across the chart: that part, asked for again (the server answers in finer buckets).
    zoomToSelection(u) {
      const select = u.select;
      if (!select || select.width < 2) return;
      const since = Math.round(u.posToVal(select.left, "x") * 1000);
      const until = Math.round(u.posToVal(select.left + select.width, "x") * 1000);
      u.setSelect({ left: 0, top: 0, width: 0, height: 0 }, false);
      if (until - since < MIN_ZOOM_MS) return;
      this.zoom = { since, until };
      this.reloadOrSay();
    }

    resetZoom() {
      this.zoom = null;
      this.reloadOrSay();
    }

    showControls() {
      for (const [key, button] of this.rangeButtons) {
        button.setAttribute("aria-pressed", key === this.range.key ? "true" : "false");
      }
      this.rangeButtons.get("custom").setAttribute(
        "aria-expanded",
        this.customForm.hidden ? "false" : "true",
      );
      this.resetButton.hidden = this.zoom === null;
      this.root.dataset.range = this.range.key;
      this.root.dataset.live = this.window.live ? "true" : "false";
      this.root.dataset.zoomed = this.zoom === null ? "false" : "true";
      this.updateLinks();
    }

    showRangeLabel() {
      const w = this.window;
      const until = w.fixed ? formatWhen(w.until, false) : "now";
      const what = this.bucketMs > 0
        ? formatDuration(this.bucketMs) + " buckets: the line is the mean, the band min to max"
        : "every reading";
      const zoomed = this.zoom !== null ? "zoomed in: " : "";
      const text = zoomed + formatWhen(w.since, false) + " \u2013 " + until + " \u00b7 " + what;
      if (this.rangeLabel.textContent !== text) this.rangeLabel.textContent = text;
      this.rangeLabel.title = "Drag across the chart to zoom in";
      this.root.dataset.since = new Date(w.since).toISOString();
      this.root.dataset.until = new Date(w.until).toISOString();
      this.root.dataset.bucketMs = String(this.bucketMs);
      this.chartEl.setAttribute(
        "aria-label",
        "Temperature of " + this.id + ", " + formatWhen(w.since, false) + " to " + until,
      );
    }

    apiUrl(path, params) {
      const query = new URLSearchParams();
      for (const [key, value] of Object.entries(params)) {
        if (value !== null && value !== undefined) query.set(key, String(value));
      }
      return "/api/devices/" + encodeURIComponent(this.id) + "/" + path + "?" + query;
    }

    // A range that ends now is left open at the end: the server's clock ends it.
    rangeParams(w) {
      return {
        since: new Date(w.since).toISOString(),
        until: w.fixed ? new Date(w.until).toISOString() : null,
      };
    }

    updateLinks() {
      const params = this.rangeParams(this.window.fixed ? this.window : this.currentWindow());
      this.csvTemperature.href = this.apiUrl("temperature.csv", params);
      this.csvLeds.href = this.apiUrl("leds.csv", params);
    }

    reloadOrSay() {
      this.reload().catch((e) => showProblem("Could not load history: " + e.message));
    }

    // Asks the server for the window's temperatures (at most about one point per pixel) and LED
    // changes, and shows them.
    async reload() {
      const generation = ++this.generation;
      this.window = this.currentWindow();
      this.loading = true;
      this.whileLoading = [];
      this.root.dataset.history = "loading";
      this.showControls();
      const params = this.rangeParams(this.window);
      const points = Math.min(MAX_CHART_POINTS, Math.max(MIN_CHART_POINTS, this.chartWidth()));
      const temperatures = getJson(this.apiUrl("temperature", Object.assign({ points }, params)));
      // A server without LED history still shows temperatures.
      const leds = getJson(this.apiUrl("leds", params)).catch(() => null);
      let body;
      try {
        body = await temperatures;
      } catch (e) {
        if (generation === this.generation) {
          this.loading = false;
          this.root.dataset.history = "failed";
        }
        throw e;
      }
      const ledBody = await leds;
      if (generation !== this.generation) return;
      this.setSeries(body);
      this.setLedHistory(ledBody);
      this.loading = false;
      for (const apply of this.whileLoading) apply();
      this.whileLoading = [];
      this.redraw();
      this.root.dataset.history = "loaded";
    }

    setSeries(body) {
      this.series = new Map();
      this.bucketMs = typeof body.bucket_ms === "number" && body.bucket_ms > 0 ? body.bucket_ms : 0;
      // A range that ends in the future was answered up to now.
      const until = parseTime(body.until);
      this.answeredUntil = Math.min(until !== null ? until : this.window.until, Date.now());
      for (const p of Array.isArray(body.points) ? body.points : []) {
        if (!p || typeof p.sensor !== "string" || typeof p.celsius !== "number") continue;
        const atMs = parseTime(p.at);
        if (atMs === null) continue;
        const min = typeof p.min === "number" ? p.min : p.celsius;
        const max = typeof p.max === "number" ? p.max : p.celsius;
        const count = typeof p.count === "number" ? p.count : 1;
        this.putPoint(p.sensor, atMs, p.celsius, min, max, count);
      }
    }

    seriesOf(sensor) {
      let s = this.series.get(sensor);
      if (!s) {
        s = { at: [], mean: [], min: [], max: [], count: [] };
        this.series.set(sensor, s);
      }
      return s;
    }

    // Puts a reading or a bucket in its place (nearly always the end); one at the same instant
    // replaces it.
    putPoint(sensor, atMs, mean, min, max, count) {
      const s = this.seriesOf(sensor);
      let i = s.at.length;
      while (i > 0 && s.at[i - 1] > atMs) i--;
      if (i > 0 && s.at[i - 1] === atMs) {
        i -= 1;
        s.mean[i] = mean;
        s.min[i] = min;
        s.max[i] = max;
        s.count[i] = count;
        return;
      }
      s.at.splice(i, 0, atMs);
      s.mean.splice(i, 0, mean);
      s.min.splice(i, 0, min);
      s.max.splice(i, 0, max);
      s.count.splice(i, 0, count);
      if (s.at.length > MAX_POINTS_PER_SENSOR) this.dropOldest(s, 1);
    }

    dropOldest(s, n) {
      for (const key of ["at", "mean", "min", "max", "count"]) s[key].splice(0, n);
    }

    // A reading from the event stream (or the device list): added while the range ends now, as
    // a point of its own, or into its time bucket when the chart shows buckets.
    addLiveReading(sensor, atMs, celsius) {
      if (atMs === null || typeof celsius !== "number" || !this.window.live) return;
      if (this.window.fixed && atMs > this.window.until) return;
      if (this.loading) {
        this.whileLoading.push(() => this.addLiveReading(sensor, atMs, celsius));
        return;
      }
      const bucket = this.bucketMs;
      if (bucket === 0) {
        this.putPoint(sensor, atMs, celsius, celsius, celsius, 1);
      } else {
        // The server's buckets hold every reading up to its answer, and the ones folded since.
        const s = this.seriesOf(sensor);
        const folded = s.foldedUntil !== undefined ? s.foldedUntil : this.answeredUntil;
        if (atMs <= folded) return;
        s.foldedUntil = atMs;
        const last = s.at.length - 1;
        // The server's buckets start at `since` rounded down to the minute (or the hour).
        const origin = last >= 0 ? s.at[last] : Math.floor(this.window.since / 60000) * 60000;
        if (last >= 0 && atMs < origin + bucket) {
          s.mean[last] = (s.mean[last] * s.count[last] + celsius) / (s.count[last] + 1);
          s.min[last] = Math.min(s.min[last], celsius);
          s.max[last] = Math.max(s.max[last], celsius);
          s.count[last] += 1;
        } else {
          const start = origin + Math.floor((atMs - origin) / bucket) * bucket;
          this.putPoint(sensor, start, celsius, celsius, celsius, 1);
        }
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
    // has no point at that instant: the means, then (for buckets) each sensor's min and max.
    chartData(banded) {
      const sensors = Array.from(this.series.keys()).sort();
      const xs = new Set();
      const index = new Map();
      for (const sensor of sensors) {
        const s = this.series.get(sensor);
        // A live window moves on: what fell out of it goes.
        let old = 0;
        while (old < s.at.length && s.at[old] + this.bucketMs < this.window.since) old++;
        if (old > 0) this.dropOldest(s, old);
        const at = new Map();
        s.at.forEach((t, i) => {
          xs.add(t);
          at.set(t, i);
        });
        index.set(sensor, at);
      }
      const times = Array.from(xs).sort((a, b) => a - b);
      const data = [times.map((t) => t / 1000)];
      const column = (sensor, key) => {
        const s = this.series.get(sensor);
        const at = index.get(sensor);
        return times.map((t) => (at.has(t) ? s[key][at.get(t)] : null));
      };
      for (const sensor of sensors) data.push(column(sensor, "mean"));
      if (banded) {
        for (const sensor of sensors) data.push(column(sensor, "min"), column(sensor, "max"));
      }
      return { sensors, data, count: times.length };
    }

    redraw() {
      this.lastRedraw = Date.now();
      if (this.window.live && !this.loading) this.window = this.currentWindow();
      const banded = this.bucketMs > 0;
      const { sensors, data, count } = this.chartData(banded);
      this.chartEmpty.hidden = count > 0;
      this.chartEl.dataset.points = String(count);
      this.chartEl.dataset.bands = String(banded && count > 0 ? sensors.length : 0);
      this.showRangeLabel();
      this.updateLinks();
      if (typeof uPlot !== "function") {
        showProblem("The chart library did not load; readings are still shown.");
        this.drawTimeline();
        return;
      }
      if (count === 0) {
        if (this.plot) {
          this.plot.destroy();
          this.plot = null;
          this.plotShape = "";
        }
        this.drawTimeline();
        return;
      }
      const shape = (banded ? "band" : "line") + "\u0000" + sensors.join("\u0000");
      if (this.plot && shape === this.plotShape) {
        this.plot.setData(data); // draws, and the draw hook draws the LED timeline
        return;
      }
      if (this.plot) this.plot.destroy();
      this.plotShape = shape;
      this.plot = new uPlot(this.plotOptions(sensors, banded), data, this.chartEl);
      this.drawTimeline();
      // The band's edges are in the data, not in the legend: the mean's entry shows them.
      const rows = this.plot.root.querySelectorAll(".u-legend .u-series");
      rows.forEach((row, i) => {
        if (i > sensors.length) row.classList.add("band-edge");
      });
    }

    plotOptions(sensors, banded) {
      const n = sensors.length;
      const minOf = (si) => n + 1 + 2 * (si - 1); // series index of a mean's min (max is next)
      // The legend shows the reading (or the bucket's mean, min and max) under the cursor; away
      // from the chart, the latest one (a bare placeholder there looked broken).
      const legendValue = (u, v, si, idx) => {
        if (v !== null && v !== undefined) {
          let text = v.toFixed(2) + " \u00b0C";
          if (banded && idx !== null && idx !== undefined) {
            const lo = u.data[minOf(si)][idx];
            const hi = u.data[minOf(si) + 1][idx];
            if (typeof lo === "number" && typeof hi === "number") {
              text += " (" + lo.toFixed(2) + " to " + hi.toFixed(2) + ")";
            }
          }
          return text;
        }
        const values = u.data[si] || [];
        for (let i = values.length - 1; i >= 0; i--) {
          if (values[i] !== null && values[i] !== undefined) {
            // In a past range, the last reading of the range.
            const which = this.window.live ? "latest " : "last ";
            return which + values[i].toFixed(2) + " \u00b0C";
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
      const line = (label, colour, width) => ({
        label, // uPlot writes labels with textContent
        stroke: colour,
        width,
        spanGaps: true,
        points: { show: false },
      });
      const means = sensors.map((s, i) =>
        Object.assign(line(s, PALETTE[i % PALETTE.length], 2), { value: legendValue }),
      );
      const edges = banded
        ? sensors.flatMap((s, i) => {
            const faint = withAlpha(PALETTE[i % PALETTE.length], 0.35);
            return [line(s + " min", faint, 1), line(s + " max", faint, 1)];
          })
        : [];
      const bands = banded
        ? sensors.map((s, i) => ({
            series: [minOf(i + 1) + 1, minOf(i + 1)],
            fill: withAlpha(PALETTE[i % PALETTE.length], 0.16),
          }))
        : [];
      return {
        width: this.chartWidth(),
        height: 180,
        legend: { show: true },
        // Dragging selects a time span; the chart does not zoom by itself but asks the server
        // for that span (zoomToSelection).
        cursor: { drag: { x: true, y: false, setScale: false } },
        scales: {
          x: { time: true, range: () => [this.window.since / 1000, this.window.until / 1000] },
        },
        axes: [
          Object.assign({}, axis, {
            values: timeTicks,
            size: (u) => (multiDay(u) ? 46 : 32),
            space: (u) => (multiDay(u) ? 70 : 50),
          }),
          Object.assign({}, axis, { values: (u, vals) => vals.map((v) => v + "\u00b0") }),
        ],
        series: [{ label: "Time" }].concat(means, edges),
        bands,
        hooks: {
          setSelect: [(u) => this.zoomToSelection(u)],
          draw: [(u) => this.drawTimeline(u)],
          setCursor: [(u) => this.showCursor(u)],
          // Hiding a sensor (a click on its legend entry) hides its band too.
          setSeries: [
            (u, si, opts) => {
              if (!banded || si < 1 || si > n || !opts || opts.show === undefined) return;
              u.setSeries(minOf(si), { show: opts.show });
              u.setSeries(minOf(si) + 1, { show: opts.show });
            },
          ],
        },
      };
    }

    chartWidth() {
      return Math.max(200, Math.floor(this.chartEl.clientWidth || 300));
    }

    fitPlot() {
      if (this.plot) this.plot.setSize({ width: this.chartWidth(), height: 180 });
      else this.drawTimeline();
    }

    // ---- the LED timeline ----

    setLedHistory(body) {
      this.ledInitial = new Map();
      this.ledChanges = [];
      this.ledTruncated = false;
      if (!body || typeof body !== "object") {
        this.ledHistory = "unavailable";
        return;
      }
      for (const s of Array.isArray(body.initial) ? body.initial : []) {
        if (s && typeof s.led === "string") {
          this.ledInitial.set(s.led, { on: s.on === true, atMs: parseTime(s.at) });
        }
      }
      for (const c of Array.isArray(body.changes) ? body.changes : []) {
        const atMs = c ? parseTime(c.at) : null;
        if (atMs !== null && typeof c.led === "string") {
          this.ledChanges.push({ led: c.led, on: c.on === true, atMs });
        }
      }
      this.ledChanges.sort((a, b) => a.atMs - b.atMs);
      this.ledTruncated = body.truncated === true;
      this.ledHistory = "loaded";
    }

    // The last state the timeline knows for `name`: {on, atMs}, or null.
    lastLedState(name) {
      for (let i = this.ledChanges.length - 1; i >= 0; i--) {
        if (this.ledChanges[i].led === name) return this.ledChanges[i];
      }
      return this.ledInitial.get(name) || null;
    }

    // An LED state the device reported (event stream, device list, command answer): a change on
    // the timeline while the range ends now.
    addLiveLed(name, on, atMs) {
      if (atMs === null || !this.window.live) return;
      if (this.window.fixed && atMs > this.window.until) return;
      if (this.loading) {
        this.whileLoading.push(() => this.addLiveLed(name, on, atMs));
        return;
      }
      if (this.ledHistory !== "loaded") return;
      const last = this.lastLedState(name);
      if (last && ((last.atMs !== null && atMs <= last.atMs) || last.on === on)) return;
      this.ledChanges.push({ led: name, on, atMs });
      this.queueRedraw();
    }

    // Where the chart's plotting area is, left and width in px from the timeline's left edge.
    plotArea(u) {
      const base = this.timeline.getBoundingClientRect();
      if (u) {
        const over = u.over.getBoundingClientRect();
        return { left: over.left - base.left, width: over.width };
      }
      return { left: 50, width: Math.max(100, base.width - 60) };
    }

    ledNames() {
      const names = new Set(this.leds.keys());
      for (const name of this.ledInitial.keys()) names.add(name);
      for (const c of this.ledChanges) names.add(c.led);
      return Array.from(names).sort();
    }

    // Each LED's "on" spans in the window: [{from, until}] in ms, until null while still on at
    // the window's end; from is when it was switched on (before the window if it was on then).
    ledSpans(name) {
      const spans = [];
      const initial = this.ledInitial.get(name);
      let on = initial ? initial.on : false;
      let from = initial && initial.atMs !== null ? initial.atMs : this.window.since;
      for (const c of this.ledChanges) {
        if (c.led !== name) continue;
        if (on && !c.on) spans.push({ from, until: c.atMs });
        if (c.on && !on) from = c.atMs;
        on = c.on;
      }
      if (on) spans.push({ from, until: null });
      return spans;
    }

    // `u`: the chart, when there is one (while uPlot draws for the first time, this.plot is not
    // set yet).
    // The spans that show in the window, those closer than a pixel merged into one (a month
    // of button presses stays a few hundred elements): {from, until, spans}.
    visibleSpans(spans, since, until, width) {
      const pixel = (until - since) / Math.max(1, width);
      const shown = [];
      for (const s of spans) {
        const end = s.until === null ? until : s.until;
        if (end < since || s.from > until) continue;
        const last = shown[shown.length - 1];
        if (last && last.until !== null && s.from - last.until < pixel) {
          last.until = s.until;
          last.spans += 1;
        } else {
          shown.push({ from: s.from, until: s.until, spans: 1 });
        }
      }
      return shown;
    }

    drawTimeline(u = this.plot) {
      const w = this.window;
      const since = w.since;
      const until = w.until;
      const span = Math.max(1, until - since);
      const area = this.plotArea(u);
      this.timeline.style.setProperty("--plot-left", area.left + "px");
      this.timeline.style.setProperty("--plot-width", area.width + "px");
      this.timeline.dataset.history = this.ledHistory;
      const pct = (t) => (Math.min(Math.max(t, since), until) - since) / span * 100;
      const rows = [];
      for (const name of this.ledNames()) {
        const row = el("div", "led-row");
        row.dataset.led = name;
        const track = el("div", "led-track");
        for (const s of this.visibleSpans(this.ledSpans(name), since, until, area.width)) {
          const end = s.until === null ? until : s.until;
          const bar = el("span", "led-on");
          bar.style.left = pct(s.from) + "%";
          bar.style.width = pct(end) - pct(s.from) + "%";
          bar.dataset.from = new Date(s.from).toISOString();
          bar.dataset.until = s.until === null ? "" : new Date(s.until).toISOString();
          const off =
            s.until !== null ? "off " + formatWhen(s.until) :
            w.fixed ? "still on at the end of the range" : "still on";
          bar.title = s.spans > 1
            ? name + ": on " + s.spans + " times between " + formatWhen(s.from) + " and " +
              (s.until !== null ? formatWhen(s.until) : "now") + " (zoom in to see each)"
            : name + ": on " + formatWhen(s.from) + ", " + off;
          if (s.spans > 1) bar.dataset.spans = String(s.spans);
          bar.setAttribute("role", "img");
          bar.setAttribute("aria-label", bar.title);
          track.append(bar);
        }
        const label = el("span", "led-row-name", name);
        label.title = name;
        row.append(label, track);
        rows.push(row);
      }
      this.timelineRows.replaceChildren(...rows);
      this.timeline.hidden = rows.length === 0 && this.ledHistory === "loaded";
      const note =
        this.ledHistory === "unavailable" ? "The server did not send the LED history." :
        this.ledTruncated ? "More LED changes than can be shown: zoom in to see them all." : "";
      this.timelineNote.textContent = note;
      this.timelineNote.hidden = note === "";
      this.listChanges();
    }

    // The changes as text, newest first: a screen reader's timeline, and exact times to copy.
    listChanges() {
      const key = this.generation + ":" + this.ledChanges.length;
      if (key === this.listedChanges) return;
      this.listedChanges = key;
      const shown = this.ledChanges.slice(-LED_CHANGES_LISTED).reverse();
      const items = shown.map((c) => {
        const item = el("li", "led-change", formatWhen(c.atMs) + " " + c.led + " " + (c.on ? "on" : "off"));
        item.dataset.led = c.led;
        item.dataset.on = c.on ? "true" : "false";
        item.dataset.at = new Date(c.atMs).toISOString();
        return item;
      });
      this.changesList.replaceChildren(...items);
      const total = this.ledChanges.length;
      this.changesSummary.textContent =
        total === 0 ? "No LED changes in this range" :
        total === 1 ? "1 LED change in this range" :
        total > shown.length ? total + " LED changes in this range (the newest " + shown.length + " listed)" :
        total + " LED changes in this range";
    }

    // The chart's cursor, continued over the timeline; its time (and bucket) and what each LED
    // was at that instant.
    showCursor(u) {
      const left = u.cursor.left;
      if (left === null || left === undefined || left < 0) {
        this.timelineCursor.hidden = true;
        this.readout.textContent = "";
        return;
      }
      const area = this.plotArea(u);
      this.timelineCursor.hidden = false;
      this.timelineCursor.style.left = area.left + left + "px";
      const at = u.posToVal(left, "x") * 1000;
      const states = this.ledNames().map((name) => {
        let state = this.ledInitial.get(name);
        for (const c of this.ledChanges) {
          if (c.led === name && c.atMs <= at) state = c;
        }
        return name + " " + (state ? (state.on ? "on" : "off") : "unknown");
      });
      let text = formatWhen(at);
      const idx = u.cursor.idx;
      if (this.bucketMs > 0 && idx !== null && idx !== undefined) {
        const start = u.data[0][idx] * 1000;
        text += " (bucket " + formatClock(new Date(start), true) + " + " +
          formatDuration(this.bucketMs) + ")";
      }
      if (states.length > 0) text += " \u00b7 LEDs: " + states.join(", ");
      this.readout.textContent = text;
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
      card.reloadOrSay();
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
        for (const card of cards.values()) {
          if (card.window.live) card.reload().catch(() => {});
        }
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
