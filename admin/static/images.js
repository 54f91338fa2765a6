"use strict";
// Images & cache page: cache settings, cache actions, selection, bulk delete, preview.
(() => {
  const data = JSON.parse(document.getElementById("images-data").textContent);
  const S = data.strings;
  const FLASH = "inkgate.images.flash";

  const fmt = (text, values) => text.replace(/\{(\w+)\}/g, (m, k) => (k in values ? String(values[k]) : m));
  const shown = (value) => (value === true ? S["common.yes"] : value === false ? S["common.no"] : String(value));
  const sourceName = (source) => S["images.source." + source] || source;

  function bytes(value) {
    let n = Number(value) || 0;
    for (const unit of ["B", "KB", "MB", "GB", "TB"]) {
      if (n < 1024 || unit === "TB") return unit === "B" ? `${Math.round(n)} B` : `${n.toFixed(1)} ${unit}`;
      n /= 1024;
    }
    return "";
  }

  // -- messages that survive the reload after a change --------------------------------
  const notice = document.getElementById("result-notice");

  function showNotice(message) {
    notice.textContent = message.text;
    notice.className = "notice " + (message.kind || "ok");
    if (message.items?.length) {
      const list = document.createElement("ul");
      for (const item of message.items) {
        const li = document.createElement("li");
        li.textContent = item;
        list.appendChild(li);
      }
      notice.appendChild(list);
    }
  }

  function reloadWith(message) {
    sessionStorage.setItem(FLASH, JSON.stringify(message));
    location.reload();
  }

  const pending = sessionStorage.getItem(FLASH);
  if (pending) {
    sessionStorage.removeItem(FLASH);
    try { showNotice(JSON.parse(pending)); } catch { /* an old format: ignore */ }
  }

  // -- cache settings ---------------------------------------------------------------------
  const form = document.getElementById("cache-settings");
  const formError = form.querySelector(".form-error");

  function settingsBody() {
    const body = {};
    for (const input of form.querySelectorAll("input[type=number]")) {
      const raw = input.value.trim();
      const number = Number(raw);
      // blank: the dashboard's value goes, the environment / file / default applies
      body[input.name] = raw === "" ? null : Number.isFinite(number) ? number : raw;
    }
    const choice = form.elements.retention_delete_remote.value;
    body.retention_delete_remote = choice === "" ? null : choice === "true";
    return body;
  }

  function showSettings(answer) {
    for (const [name, s] of Object.entries(answer.settings)) {
      const field = form.elements[name];
      if (field?.tagName === "SELECT") field.value = s.overridden ? String(s.value) : "";
      else if (field) {
        field.value = s.overridden ? String(s.value) : "";
        field.placeholder = String(s.fallback.value);
      }
      const line = form.querySelector(`[data-source-for="${name}"]`);
      if (!line) continue;
      const chip = line.querySelector("[data-source]");
      chip.dataset.source = s.source;
      chip.textContent = sourceName(s.source);
      chip.classList.toggle("ok", s.overridden);
      line.querySelector(".effective").textContent = fmt(S["images.in_effect"], { value: shown(s.value) });
      line.querySelector(".fallback").textContent = fmt(S["images.without"], {
        value: shown(s.fallback.value),
        source: sourceName(s.fallback.source),
      });
    }
  }

  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    formError.classList.add("hidden");
    for (const bad of form.querySelectorAll("[aria-invalid]")) bad.removeAttribute("aria-invalid");
    const save = document.getElementById("cache-settings-save");
    save.disabled = true;
    try {
      showSettings(await inkgate.api("PATCH", "/admin/api/cache/settings", settingsBody()));
      inkgate.toast(S["images.settings_saved"]);
    } catch (err) {
      formError.textContent = err.message;
      formError.classList.remove("hidden");
      const param = err.data?.error?.param;
      const field = param && form.elements[param];
      if (field) { field.setAttribute("aria-invalid", "true"); field.focus(); }
    } finally {
      save.disabled = false;
    }
  });

  // -- cache actions (admin.js sends them; their answers are shown after a reload) -------
  const actionMessages = {
    "cache-cleanup": (r) => fmt(S["images.cleaned"], {
      ttl: r.ttl_evicted, cap: r.cap_evicted, retention: r.retention_deleted_images,
      blobs: r.deleted_blobs, orphans: r.orphan_files, lost: r.lost_images, freed: bytes(r.freed_bytes),
    }),
    "cache-upload-pending": (r) => fmt(S["images.queued"], { count: r.queued }),
    "cache-retry-failed": (r) => fmt(S["images.queued"], { count: r.queued }),
    "cache-purge-results": (r) => fmt(S["images.purged"], { count: r.purged }),
  };
  document.getElementById("cache-actions").addEventListener("api:done", (event) => {
    const describe = actionMessages[event.target.id];
    if (describe) reloadWith({ text: describe(event.detail) });
  });

  // -- selection and bulk delete -------------------------------------------------------
  const picks = [...document.querySelectorAll("#image-grid .pick")];
  const selectAll = document.getElementById("select-all");
  const count = document.getElementById("selected-count");
  const bulk = [...document.querySelectorAll(".bulk-delete")];

  const chosen = () => picks.filter((box) => box.checked).map((box) => box.value);

  function syncSelection() {
    const ids = chosen();
    for (const box of picks) box.closest(".tile").classList.toggle("selected", box.checked);
    if (count) count.textContent = fmt(S["images.selected"], { count: ids.length });
    if (selectAll) {
      selectAll.checked = ids.length > 0 && ids.length === picks.length;
      selectAll.indeterminate = ids.length > 0 && ids.length < picks.length;
    }
    for (const button of bulk) button.disabled = ids.length === 0 || button.hasAttribute("data-no-bucket");
  }

  for (const box of picks) box.addEventListener("change", syncSelection);
  selectAll?.addEventListener("change", () => {
    for (const box of picks) box.checked = selectAll.checked;
    syncSelection();
  });

  function reasonText(reason) {
    return data.reasons[reason] || reason;
  }

  async function deleteImages(ids, scope, buttons) {
    if (!ids.length || !confirm(fmt(S["images.confirm_" + scope], { count: ids.length }))) return;
    for (const b of buttons) b.disabled = true;
    try {
      const r = await inkgate.api("POST", "/admin/api/images/delete", { ids, scope });
      const parts = [fmt(S["images.deleted"], { count: r.deleted.length })];
      if (r.not_found.length) parts.push(fmt(S["images.not_found"], { count: r.not_found.length }));
      if (r.skipped.length) parts.push(fmt(S["images.skipped"], { count: r.skipped.length }));
      reloadWith({
        kind: r.skipped.length ? "warn" : "ok",
        text: parts.join(" "),
        items: r.skipped.map((s) => `${s.id}: ${reasonText(s.reason)}`),
      });
    } catch (err) {
      inkgate.toast(err.message, "error");
      for (const b of buttons) b.disabled = b.hasAttribute("data-no-bucket");
      syncSelection();
    }
  }

  for (const button of bulk) {
    button.addEventListener("click", () => deleteImages(chosen(), button.dataset.scope, bulk));
  }

  // -- preview -----------------------------------------------------------------------------
  const dialog = document.getElementById("image-preview");
  const $ = (id) => document.getElementById(id);
  let current = null;

  function stateText(image) {
    const parts = [];
    if (image.local) parts.push(S["images.state.local"]);
    if (image.remote_state === "missing") parts.push(S["images.state.missing"]);
    else if (image.remote_state !== "none") parts.push(S["images.state." + image.remote_state] || image.remote_state);
    return parts.join(" · ");
  }

  function openPreview(id) {
    const image = data.images[id];
    if (!image) return;
    current = image;
    $("preview-id").textContent = image.id;
    $("preview-image").src = image.url;
    $("preview-open").href = image.url;
    $("preview-full").href = image.url;
    $("preview-size").textContent = `${image.size_text} (${image.size_bytes} B)`;
    $("preview-dimensions").textContent = image.width ? `${image.width} × ${image.height}` : "—";
    $("preview-type").textContent = image.mime || "—";
    $("preview-created").textContent = image.created_text || "—";
    $("preview-accessed").textContent = image.accessed_text || "—";
    $("preview-state").textContent = stateText(image) || "—";
    const post = $("preview-post");
    post.textContent = image.post_id || "";
    post.href = image.post_id ? `/admin/posts/${encodeURIComponent(image.post_id)}` : "#";
    for (const el of dialog.querySelectorAll(".preview-post")) el.classList.toggle("hidden", !image.post_id);
    $("preview-error").textContent = image.last_error || "";
    for (const el of dialog.querySelectorAll(".preview-error")) el.classList.toggle("hidden", !image.last_error);
    dialog.showModal();
  }

  for (const thumb of document.querySelectorAll("#image-grid [data-preview]")) {
    thumb.addEventListener("click", () => openPreview(thumb.dataset.preview));
  }
  dialog.addEventListener("close", () => {
    $("preview-image").removeAttribute("src"); // stop loading a large image nobody sees
    current = null;
  });
  const previewButtons = [...dialog.querySelectorAll(".preview-delete")];
  for (const button of previewButtons) {
    button.addEventListener("click", () => {
      if (current) deleteImages([current.id], button.dataset.scope, previewButtons);
    });
  }

  syncSelection();
})();
