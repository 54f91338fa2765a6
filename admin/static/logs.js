"use strict";
// Logs page: local times; auto-refresh puts new rows on top; older rows on demand.
(() => {
  const data = JSON.parse(document.getElementById("logs-data").textContent);
  const S = data.strings;
  const POLL_MS = 3000;
  const CATCH_UP_ROUNDS = 20; // answers with has_more fetched at once, per tick
  const MAX_ROWS = 1000; // a tab left open for hours keeps only the newest rows
  const FRESH_MS = 2500;
  const STORE = "inkgate.logs.auto";
  const LEVEL_CLASS = { info: "level-info", warning: "warn", error: "bad" };

  const tbody = document.querySelector("#logs tbody");
  const older = document.getElementById("logs-older");
  const toggle = document.getElementById("auto-refresh");
  const stateText = document.getElementById("refresh-state");
  let latest = data.latest;
  let nextBefore = data.next_before;
  let timer = null;
  let busy = false;
  let lastError = "";

  const fmt = (text, values) => text.replace(/\{(\w+)\}/g, (m, k) => (k in values ? String(values[k]) : m));
  const pad = (n) => String(n).padStart(2, "0");
  const clock = (d) => `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;
  const utcText = (iso) => (iso ? iso.slice(0, 19).replace("T", " ") + " UTC" : "");

  function localText(iso) {
    const d = new Date(iso);
    if (Number.isNaN(d.getTime())) return "";
    return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} ${clock(d)}`;
  }

  function showLocal(time) {
    const text = localText(time.dateTime);
    if (!text) return;
    time.title = utcText(time.dateTime);
    time.textContent = text;
  }

  const pageName = (page) => (page === 0 ? S["logs.cover"] : fmt(S["logs.page"], { n: page + 1 }));

  function cell(row, className) {
    const td = document.createElement("td");
    if (className) td.className = className;
    row.appendChild(td);
    return td;
  }

  // the same cells as the log_row macro in logs.html
  function makeRow(item) {
    const row = document.createElement("tr");
    row.dataset.id = item.id;
    row.dataset.level = item.level;
    row.dataset.source = item.source;
    row.className = "level-" + item.level;
    const time = document.createElement("time");
    time.dateTime = item.time;
    time.textContent = utcText(item.time);
    showLocal(time);
    cell(row, "when").appendChild(time);
    const chip = document.createElement("span");
    chip.className = "chip " + (LEVEL_CLASS[item.level] || "");
    chip.textContent = S["logs.level." + item.level] || item.level;
    cell(row).appendChild(chip);
    cell(row).textContent = S["logs.source." + item.source] || item.source;
    cell(row).textContent = item.key_name || "—";
    cell(row).textContent = item.model || "—";
    const where = cell(row, "where");
    if (item.endpoint) {
      const code = document.createElement("code");
      code.textContent = `${item.method} ${item.endpoint}`;
      where.appendChild(code);
    }
    if (item.post_id) {
      const link = document.createElement("a");
      link.href = "/admin/posts/" + encodeURIComponent(item.post_id);
      link.textContent = item.post_id;
      if (item.topic) link.title = item.topic;
      where.append(item.endpoint ? " " : "", link);
    }
    if (item.page !== null && item.page !== undefined) where.append(" · " + pageName(item.page));
    cell(row, "num").textContent = item.status ?? "";
    cell(row, "num").textContent = item.latency_ms == null ? "" : String(Math.round(item.latency_ms));
    cell(row, "message").textContent = item.message || "";
    return row;
  }

  const shownIds = () => new Set([...tbody.querySelectorAll("tr[data-id]")].map((row) => row.dataset.id));

  function addRows(items, atTop) {
    const shown = shownIds();
    const fresh = items.filter((item) => !shown.has(item.id));
    if (!fresh.length) return [];
    document.getElementById("logs-empty")?.remove();
    const rows = fresh.map(makeRow);
    const block = document.createDocumentFragment();
    block.append(...rows);
    if (atTop) tbody.prepend(block);
    else tbody.append(block);
    return rows;
  }

  // Rows beyond MAX_ROWS go from the bottom; "older" then pages back from the oldest kept.
  function trim() {
    const rows = [...tbody.querySelectorAll("tr[data-id]")];
    if (rows.length <= MAX_ROWS) return;
    for (const row of rows.slice(MAX_ROWS)) row.remove();
    let [usage, events] = latest.split("-").map((n) => Number(n) + 1);
    for (const row of rows.slice(0, MAX_ROWS)) {
      const [kind, id] = row.dataset.id.split(":");
      if (kind === "r") usage = Math.min(usage, Number(id));
      else events = Math.min(events, Number(id));
    }
    nextBefore = `${usage}-${events}`;
    older.classList.remove("hidden");
  }

  function query(extra) {
    const params = new URLSearchParams({ ...data.filters, limit: String(data.limit), ...extra });
    return "/admin/api/logs?" + params.toString();
  }

  function schedule() {
    clearTimeout(timer);
    timer = null;
    if (!toggle.checked) {
      stateText.textContent = S["logs.paused"];
    } else if (document.visibilityState !== "visible") {
      stateText.textContent = S["logs.hidden"];
    } else {
      timer = setTimeout(poll, POLL_MS);
    }
  }

  async function poll() {
    if (busy) return;
    busy = true;
    clearTimeout(timer);
    timer = null;
    try {
      for (let round = 0; round < CATCH_UP_ROUNDS; round++) {
        const answer = await inkgate.api("GET", query({ after_id: latest }));
        latest = answer.latest;
        for (const row of addRows(answer.data, true)) {
          row.classList.add("fresh");
          setTimeout(() => row.classList.remove("fresh"), FRESH_MS);
        }
        if (!answer.has_more) break;
      }
      trim();
      stateText.textContent = fmt(S["logs.checked"], { time: clock(new Date()) });
      lastError = "";
    } catch (err) {
      if (err.message !== lastError) inkgate.toast(err.message, "error");
      lastError = err.message;
    } finally {
      busy = false;
      schedule();
    }
  }

  older.addEventListener("click", async () => {
    if (!nextBefore) return;
    older.disabled = true;
    try {
      const answer = await inkgate.api("GET", query({ before_id: nextBefore }));
      addRows(answer.data, false);
      nextBefore = answer.next_before;
      older.classList.toggle("hidden", !answer.has_more);
    } catch (err) {
      inkgate.toast(err.message, "error");
    } finally {
      older.disabled = false;
    }
  });

  toggle.addEventListener("change", () => {
    localStorage.setItem(STORE, toggle.checked ? "1" : "0");
    if (toggle.checked) poll();
    else schedule();
  });

  document.addEventListener("visibilitychange", () => {
    if (toggle.checked && document.visibilityState === "visible") poll();
    else schedule();
  });

  for (const time of tbody.querySelectorAll("time[datetime]")) showLocal(time);
  toggle.checked = localStorage.getItem(STORE) !== "0";
  schedule();
})();
