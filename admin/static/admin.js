// InkGate dashboard: a little plain JS. Every write sends the session's CSRF token.
"use strict";

const csrf = () => document.querySelector('meta[name="csrf-token"]')?.content || "";
const lang = () => document.documentElement.lang || "en";

async function api(method, url, body) {
  const init = { method, headers: { "X-CSRF-Token": csrf(), Accept: "application/json" }, credentials: "same-origin" };
  if (body !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  const response = await fetch(url, init);
  let data = null;
  const type = response.headers.get("content-type") || "";
  if (type.includes("application/json")) data = await response.json();
  if (response.status === 401 && data?.error?.code === "not_signed_in") {
    location.href = "/admin/login?expired=1&next=" + encodeURIComponent(location.pathname + location.search);
  }
  if (!response.ok) {
    const message = data?.error?.message || `${response.status} ${response.statusText}`;
    const error = new Error(message);
    error.status = response.status;
    error.data = data;
    throw error;
  }
  return data;
}

function toast(message, kind = "ok") {
  let box = document.getElementById("toast");
  if (!box) {
    box = document.createElement("div");
    box.id = "toast";
    box.setAttribute("role", "status");
    document.body.appendChild(box);
  }
  box.className = "toast " + kind;
  box.textContent = message;
  clearTimeout(box._timer);
  box._timer = setTimeout(() => (box.className = "toast hidden"), 4000);
}

async function copyText(text, button) {
  try {
    await navigator.clipboard.writeText(text);
  } catch {
    // http:// pages have no clipboard API: select a temporary field and copy
    const area = document.createElement("textarea");
    area.value = text;
    document.body.appendChild(area);
    area.select();
    document.execCommand("copy");
    area.remove();
  }
  if (button) {
    const old = button.textContent;
    button.textContent = button.dataset.copied || "✓";
    setTimeout(() => (button.textContent = old), 1500);
  }
}

// Buttons with data-copy="#selector" or data-copy-text="..."
document.addEventListener("click", (event) => {
  const button = event.target.closest("[data-copy],[data-copy-text]");
  if (!button) return;
  const text = button.dataset.copyText ?? document.querySelector(button.dataset.copy)?.textContent ?? "";
  copyText(text.trim(), button);
});

// <dialog> openers and closers: data-open="#id", data-close
document.addEventListener("click", (event) => {
  const opener = event.target.closest("[data-open]");
  if (opener) document.querySelector(opener.dataset.open)?.showModal();
  const closer = event.target.closest("[data-close]");
  if (closer) closer.closest("dialog")?.close();
});

// Forms with data-api="METHOD /url": sent as JSON (empty fields → null, numbers as numbers)
function formJson(form) {
  const out = {};
  for (const element of form.elements) {
    if (!element.name || element.disabled) continue;
    const name = element.name;
    if (element.type === "checkbox" && element.dataset.list !== undefined) {
      out[name] = out[name] || [];
      if (element.checked) out[name].push(element.value);
      continue;
    }
    if (element.type === "checkbox") { out[name] = element.checked; continue; }
    let value = element.value.trim();
    if (value === "") value = null;
    else if (element.type === "number") value = Number(value);
    else if (element.type === "datetime-local") value = new Date(value).toISOString();
    out[name] = value;
  }
  return out;
}

document.addEventListener("submit", async (event) => {
  const form = event.target;
  if (!form.dataset.api) return;
  event.preventDefault();
  const [method, url] = form.dataset.api.split(" ");
  const body = formJson(form);
  for (const [key, value] of Object.entries(body)) {
    if (Array.isArray(value) && form.dataset.emptyListNull !== undefined && value.length === 0) body[key] = null;
  }
  const error = form.querySelector(".form-error");
  if (error) error.classList.add("hidden");
  const submit = form.querySelector("[type=submit]");
  if (submit) submit.disabled = true;
  try {
    const result = await api(method, url, body);
    form.dispatchEvent(new CustomEvent("api:done", { detail: result, bubbles: true }));
  } catch (err) {
    if (error) { error.textContent = err.message; error.classList.remove("hidden"); }
    else toast(err.message, "error");
  } finally {
    if (submit) submit.disabled = false;
  }
});

// Buttons with data-action="METHOD /url" (optional data-confirm, data-body JSON): reload after
document.addEventListener("click", async (event) => {
  const button = event.target.closest("[data-action]");
  if (!button) return;
  event.preventDefault();
  if (button.dataset.confirm && !confirm(button.dataset.confirm)) return;
  const [method, url] = button.dataset.action.split(" ");
  button.disabled = true;
  try {
    const result = await api(method, url, button.dataset.body ? JSON.parse(button.dataset.body) : undefined);
    button.dispatchEvent(new CustomEvent("api:done", { detail: result, bubbles: true }));
    if (button.dataset.reload !== undefined) location.reload();
  } catch (err) {
    toast(err.message, "error");
  } finally {
    button.disabled = false;
  }
});

window.inkgate = { api, toast, copyText, formJson };
