"use strict";
// API keys page: one dialog creates or edits; a new key is shown once.
(() => {
  const keys = JSON.parse(document.getElementById("keys-data").textContent);
  const dialog = document.getElementById("key-dialog");
  const form = document.getElementById("key-form");
  const title = document.getElementById("key-form-title");

  const localInput = (iso) => {
    if (!iso) return "";
    const d = new Date(iso);
    const pad = (n) => String(n).padStart(2, "0");
    return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())}T${pad(d.getHours())}:${pad(d.getMinutes())}`;
  };

  function open(key) {
    form.reset();
    form.querySelector(".form-error").classList.add("hidden");
    title.textContent = key ? title.dataset.edit : title.dataset.create;
    form.dataset.api = key ? `PATCH /admin/api/keys/${key.id}` : "POST /admin/api/keys";
    if (key) {
      const l = key.limits;
      form.elements.name.value = key.name;
      for (const box of form.querySelectorAll('input[name="allowed_models"]')) box.checked = (l.allowed_models || []).includes(box.value);
      form.elements.rpm.value = l.rpm ?? "";
      form.elements.max_concurrent_posts.value = l.max_concurrent_posts ?? "";
      form.elements.daily_image_quota.value = l.daily_image_quota ?? "";
      form.elements.expires_at.value = localInput(l.expires_at);
    }
    dialog.showModal();
  }

  document.getElementById("new-key").addEventListener("click", () => open(null));
  for (const button of document.querySelectorAll(".edit-key")) {
    button.addEventListener("click", () => open(keys.find((k) => k.id === button.dataset.id)));
  }
  form.addEventListener("api:done", (event) => {
    dialog.close();
    if (event.detail.key) {
      document.getElementById("new-key-value").textContent = event.detail.key;
      document.getElementById("key-created").showModal();
    } else {
      location.reload();
    }
  });
  const created = document.getElementById("key-created");
  document.getElementById("key-created-close").addEventListener("click", () => created.close());
  // closed by the button or by Escape: the key leaves the page, which reloads to list it
  created.addEventListener("close", () => {
    document.getElementById("new-key-value").textContent = "";
    location.reload();
  });
})();
