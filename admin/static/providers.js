"use strict";
// Providers & models page: the redink card, provider tests, the add / edit / override
// dialog (a form built from the type's options schema) and the model dialog. Secrets are
// write-only: an input never holds a stored secret or its mask; blank keeps the stored one.
(() => {
  const data = JSON.parse(document.getElementById("providers-data").textContent);
  const S = data.strings;
  const FLASH = "inkgate.providers.flash";
  const $ = (id) => document.getElementById(id);
  const fmt = (text, values) => text.replace(/\{(\w+)\}/g, (m, k) => (k in values ? String(values[k]) : m));
  const ENV_REF = /^\$\{[A-Za-z_][A-Za-z0-9_]*(?::-[^}]*)?\}$/;
  const typeOf = (name) => data.types.find((t) => t.type === name);
  const providerOf = (name) => data.providers.find((p) => p.name === name);

  function el(tag, attrs = {}, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(attrs)) {
      if (value === undefined || value === null || value === false) continue;
      if (key === "class") node.className = value;
      else if (key === "text") node.textContent = value;
      else node.setAttribute(key, value === true ? "" : String(value));
    }
    for (const child of children) if (child) node.append(child);
    return node;
  }

  function reloadWith(message) {
    sessionStorage.setItem(FLASH, message);
    location.reload();
  }
  const flash = sessionStorage.getItem(FLASH);
  if (flash) {
    sessionStorage.removeItem(FLASH);
    inkgate.toast(flash);
  }

  function showError(form, err) {
    const box = form.querySelector(".form-error");
    box.textContent = err.message;
    box.classList.remove("hidden");
    const param = err.data?.error?.param || "";
    for (const input of form.querySelectorAll("[aria-invalid]")) input.removeAttribute("aria-invalid");
    const target = param.startsWith("options.")
      ? form.querySelector(`[data-option="${CSS.escape(param.slice(8).split(".")[0])}"]`)
      : form.querySelector(`[name="${CSS.escape(param)}"]`);
    if (target) {
      target.setAttribute("aria-invalid", "true");
      target.focus();
    }
  }

  function clearError(form) {
    form.querySelector(".form-error").classList.add("hidden");
    for (const input of form.querySelectorAll("[aria-invalid]")) input.removeAttribute("aria-invalid");
  }

  // -- test reports -----------------------------------------------------------------------
  function showReport(box, answer) {
    const items = [];
    for (const report of answer.providers || []) {
      if (!report.checks.length) items.push(el("li", { class: "muted", text: S["providers.no_checks"] }));
      for (const check of report.checks) {
        items.push(el("li", { class: "check " + (check.ok ? "ok" : "bad"), "data-check": check.check },
          el("span", { class: "chip " + (check.ok ? "ok" : "bad"), text: `${check.check} · ${check.ok ? S["providers.test_ok"] : S["providers.test_failed"]}` }),
          el("span", { class: "detail", text: check.detail }),
          el("span", { class: "muted small latency", text: `${check.latency_ms} ms` })));
      }
    }
    const head = el("strong", { class: answer.ok ? "ok" : "bad", text: answer.ok ? S["providers.test_ok"] : S["providers.test_failed"] });
    box.replaceChildren(head, el("ul", { class: "plain checks-list" }, ...items));
    box.dataset.ok = String(Boolean(answer.ok));
  }

  async function runTest(box, request) {
    box.classList.remove("hidden");
    box.removeAttribute("data-ok");
    box.replaceChildren(el("span", { class: "muted", text: S["providers.testing"] }));
    try {
      showReport(box, await request());
    } catch (err) {
      box.replaceChildren(el("span", { class: "problem", text: err.message }));
      box.dataset.ok = "false";
    }
  }

  document.querySelector("#providers").addEventListener("click", async (event) => {
    const button = event.target.closest(".provider-test");
    if (button) {
      const deep = button.dataset.deep !== undefined;
      if (deep && !confirm(S["providers.confirm_deep"])) return;
      const name = button.dataset.name;
      const row = document.querySelector(`tr.test-row[data-test-for="${CSS.escape(name)}"]`);
      row.classList.remove("hidden");
      button.disabled = true;
      const url = `/admin/api/providers/${encodeURIComponent(name)}/test${deep ? "?deep=true" : ""}`;
      await runTest(row.querySelector(".test-result"), () => inkgate.api("POST", url));
      button.disabled = false;
      return;
    }
    const edit = event.target.closest(".provider-edit");
    if (edit) openProvider("edit", providerOf(edit.dataset.name));
    const override = event.target.closest(".provider-override");
    if (override) openProvider("override", providerOf(override.dataset.name));
  });
  document.querySelector("#providers").addEventListener("api:done", () => sessionStorage.setItem(FLASH, S["providers.deleted"]));

  // -- the provider dialog: a form from the type's options schema ---------------------------
  const pDialog = $("provider-dialog");
  const pForm = $("provider-form");
  const pOptions = $("p-options");
  const pType = $("p-type");
  const pName = $("p-name");
  const pMax = $("p-max");
  const pTest = $("p-test-result");
  let mode = "create"; // create | edit | override
  let current = null; // the provider being edited or overridden
  let fields = []; // {name, kind, input, secret, initial}

  function resolve(schema, prop) {
    let p = prop || {};
    if (p.$ref) {
      const key = p.$ref.split("/").pop();
      p = { ...(schema.$defs?.[key] || {}), ...p, $ref: undefined };
    }
    if (p.anyOf) {
      const kinds = p.anyOf.filter((x) => x.type !== "null");
      if (kinds.length !== 1) return { ...p, kind: "json" };
      p = { ...p, ...resolve(schema, kinds[0]), anyOf: undefined, nullable: true };
    }
    if (p.kind) return p;
    if (Array.isArray(p.enum)) return { ...p, kind: "enum" };
    const kind = { boolean: "boolean", integer: "integer", number: "number", string: "string" }[p.type] || "json";
    return { ...p, kind };
  }

  const show = (value) => (typeof value === "object" && value !== null ? JSON.stringify(value) : String(value));

  // a `*headers` object without the secret headers' values: blank keeps them
  function blankSecrets(name, value, secretFields) {
    if (!value || typeof value !== "object" || Array.isArray(value)) return value;
    const out = { ...value };
    for (const path of secretFields) {
      const [top, inner] = path.split(".");
      if (top === name && inner !== undefined && inner in out) out[inner] = "";
    }
    return out;
  }

  function buildFields(typeName, options) {
    const type = typeOf(typeName);
    const schema = type?.options_schema || {};
    const required = new Set(schema.required || []);
    const secrets = new Set(type?.secret_fields || []);
    const stored = current?.options || {};
    const storedSecrets = current?.secret_fields || [];
    $("p-type-description").textContent = type?.description || "";
    fields = [];
    const nodes = [];
    for (const [name, raw] of Object.entries(schema.properties || {})) {
      const prop = resolve(schema, raw);
      const secret = secrets.has(name) || raw.writeOnly || prop.format === "password";
      const id = "opt-" + name;
      const isRequired = required.has(name);
      const label = el("label", { for: id }, prop.title || name);
      label.append(" ", el("code", { class: "small", text: name }));
      if (isRequired) label.append(" ", el("span", { class: "required", text: "* " + S["providers.required"] }));
      const hints = [];
      if (prop.description) hints.push(prop.description);
      let input;
      let initial = options[name];
      if (secret) {
        input = el("input", { type: "password", id, autocomplete: "new-password", spellcheck: "false" });
        const shown = mode === "edit" ? stored[name] : undefined;
        if (mode === "override" && typeof initial === "string" && ENV_REF.test(initial)) {
          input.value = initial; // an environment reference, not a secret
        } else if (shown) {
          input.placeholder = fmt(S["providers.keep_secret"], { mask: shown });
          hints.push(fmt(S["providers.keep_secret"], { mask: shown }));
        } else if (mode === "override" && current.options[name]) {
          hints.push(S["providers.secret_not_copied"]);
        } else {
          hints.push(S["providers.secret_new"]);
        }
        if (isRequired && mode !== "edit") input.required = true;
        initial = input.value;
      } else if (prop.kind === "boolean") {
        input = el("input", { type: "checkbox", id });
        initial = initial ?? prop.default ?? false;
        input.checked = Boolean(initial);
        const box = el("label", { class: "inline", for: id }, input, " ", prop.title || name, " ", el("code", { class: "small", text: name }));
        box.dataset.option = name;
        input.dataset.option = name;
        fields.push({ name, kind: "boolean", input, initial: Boolean(initial) });
        nodes.push(el("div", { class: "option" }, box, hints.length ? el("p", { class: "muted small hint", text: hints.join(" ") }) : null));
        continue;
      } else if (prop.kind === "enum") {
        input = el("select", { id });
        if (!isRequired || prop.default !== undefined) {
          const fallback = prop.default === undefined || prop.default === null ? "—" : fmt(S["providers.default"], { value: show(prop.default) });
          input.append(el("option", { value: "", text: fallback }));
        }
        for (const value of prop.enum) input.append(el("option", { value: show(value), text: show(value) }));
        input.value = initial === undefined || initial === null ? "" : show(initial);
        initial = input.value;
      } else if (prop.kind === "integer" || prop.kind === "number") {
        input = el("input", { type: "number", id, step: prop.kind === "integer" ? "1" : "any", min: prop.minimum, max: prop.maximum });
        input.value = initial === undefined || initial === null ? "" : String(initial);
        initial = input.value;
      } else if (prop.kind === "string") {
        input = el("input", { type: "text", id, maxlength: prop.maxLength, spellcheck: "false" });
        input.value = initial === undefined || initial === null ? "" : String(initial);
        initial = input.value;
      } else {
        const hidden = name.endsWith("headers") && storedSecrets.some((p) => p.startsWith(name + "."));
        input = el("textarea", { id, rows: "3", spellcheck: "false", class: "json" });
        const value = mode === "edit" ? blankSecrets(name, initial, storedSecrets) : initial;
        input.value = value === undefined || value === null ? "" : JSON.stringify(value, null, 2);
        hints.push(S["providers.json_hint"]);
        if (hidden) hints.push(S["providers.secret_headers_blank"]);
        initial = input.value;
      }
      if (prop.kind !== "json" && prop.default !== undefined && prop.default !== null && input.tagName === "INPUT" && !input.placeholder) {
        input.placeholder = fmt(S["providers.default"], { value: show(prop.default) });
      }
      if (isRequired && !secret && prop.default === undefined) input.required = true;
      input.dataset.option = name;
      fields.push({ name, kind: secret ? "secret" : prop.kind, input, initial });
      nodes.push(el("div", { class: "option" }, label, input, hints.length ? el("p", { class: "muted small hint", text: hints.join(" ") }) : null));
    }
    pOptions.replaceChildren(pOptions.querySelector("legend"), ...nodes);
  }

  function valueOf(field) {
    const input = field.input;
    if (field.kind === "boolean") return input.checked;
    const text = input.value.trim();
    if (text === "") return null;
    if (field.kind === "integer" || field.kind === "number") return Number(text);
    if (field.kind === "json") {
      try {
        return JSON.parse(text);
      } catch {
        const error = new Error(fmt(S["providers.bad_json"], { field: field.name }));
        error.data = { error: { param: "options." + field.name } };
        throw error;
      }
    }
    if (field.kind === "enum") {
      const type = typeOf(pType.value);
      const prop = resolve(type.options_schema, type.options_schema.properties[field.name]);
      return prop.enum.find((v) => show(v) === text) ?? text;
    }
    return input.value;
  }

  // all = every filled field (create, test); else only what changed (edit)
  function options(all) {
    const out = {};
    for (const field of fields) {
      const value = valueOf(field);
      if (field.kind === "secret") {
        if (value) out[field.name] = value; // blank: keep the stored one
        continue;
      }
      const changed = field.kind === "boolean" ? value !== field.initial : field.input.value.trim() !== String(field.initial).trim();
      if (all) {
        if (field.kind === "boolean" ? changed : value !== null) out[field.name] = value;
      } else if (changed) {
        out[field.name] = value; // null removes the option
      }
    }
    return out;
  }

  function openProvider(how, provider) {
    mode = how;
    current = provider || null;
    pForm.reset();
    clearError(pForm);
    pTest.classList.add("hidden");
    pTest.replaceChildren();
    const title = { create: S["providers.new"], edit: S["providers.edit_title"], override: S["providers.override_title"] }[how];
    $("provider-title").textContent = fmt(title, { name: provider?.name || "" });
    pName.value = provider?.name || "";
    pName.readOnly = how !== "create";
    pType.value = provider?.type || (typeOf("openai") ? "openai" : data.types[0]?.type);
    pMax.value = provider?.max_concurrency ?? "";
    // override: the file's options without its secrets (masked in the data anyway)
    const start = provider ? { ...provider.options } : {};
    if (how === "override") {
      for (const path of provider.secret_fields) {
        const [top, inner] = path.split(".");
        if (inner !== undefined && start[top]) start[top] = blankSecrets(top, start[top], [path]);
        else if (!(typeof start[top] === "string" && ENV_REF.test(start[top]))) delete start[top];
      }
    }
    buildFields(pType.value, start);
    pDialog.showModal();
    (how === "create" ? pName : pType).focus();
  }

  pType.addEventListener("change", () => {
    // options of one type mean nothing to another: keep only same-named plain values
    const kept = {};
    for (const field of fields) {
      if (field.kind !== "secret" && field.kind !== "boolean" && field.input.value.trim()) {
        try { kept[field.name] = valueOf(field); } catch { /* dropped */ }
      }
    }
    const schema = typeOf(pType.value)?.options_schema?.properties || {};
    buildFields(pType.value, Object.fromEntries(Object.entries(kept).filter(([k]) => k in schema)));
    // every option is new for this type
    for (const field of fields) if (field.kind !== "boolean") field.initial = "";
  });

  $("new-provider").addEventListener("click", () => openProvider("create", null));

  $("p-test").addEventListener("click", async (event) => {
    const button = event.currentTarget;
    clearError(pForm);
    let body;
    try {
      body = { type: pType.value, options: options(true) };
    } catch (err) {
      showError(pForm, err);
      return;
    }
    // with the name, blank secrets and options not sent are the saved (or file) ones
    if (mode !== "create") body.name = current.name;
    button.disabled = true;
    await runTest(pTest, () => inkgate.api("POST", "/admin/api/providers/test", body));
    button.disabled = false;
  });

  pForm.addEventListener("submit", async (event) => {
    event.preventDefault();
    clearError(pForm);
    const save = $("p-save");
    const max = pMax.value.trim() === "" ? null : Number(pMax.value);
    let method, url, body;
    try {
      if (mode === "edit") {
        const typeChanged = pType.value !== current.type;
        body = {};
        const opts = options(typeChanged);
        if (typeChanged) {
          body.type = pType.value;
          // the old type's options that this type does not have: removed
          const known = typeOf(pType.value)?.options_schema?.properties || {};
          for (const key of Object.keys(current.options)) if (!(key in known) && !(key in opts)) opts[key] = null;
        }
        if (Object.keys(opts).length) body.options = opts;
        if (max !== (current.max_concurrency ?? null)) body.max_concurrency = max;
        if (!Object.keys(body).length) {
          pDialog.close();
          inkgate.toast(S["providers.nothing_changed"]);
          return;
        }
        method = "PATCH";
        url = `/admin/api/providers/${encodeURIComponent(current.name)}`;
      } else {
        body = { name: pName.value.trim(), type: pType.value, options: options(true) };
        if (max !== null) body.max_concurrency = max;
        method = "POST";
        url = "/admin/api/providers";
      }
    } catch (err) {
      showError(pForm, err);
      return;
    }
    save.disabled = true;
    try {
      await inkgate.api(method, url, body);
      pDialog.close();
      reloadWith(S["providers.saved"]);
    } catch (err) {
      showError(pForm, err);
    } finally {
      save.disabled = false;
    }
  });

  // -- the redink card ------------------------------------------------------------------------
  const redinkForm = $("redink-form");
  if (redinkForm) {
    const redink = data.models.find((m) => m.name === "redink");
    redinkForm.addEventListener("submit", async (event) => {
      event.preventDefault();
      clearError(redinkForm);
      const form = inkgate.formJson(redinkForm);
      // a whole definition: what the card does not show (temperature, …) is kept
      const body = { ...(redink.definition || {}), ...form, type: "redink" };
      const save = $("redink-save");
      save.disabled = true;
      try {
        await inkgate.api("PUT", "/admin/api/models/redink", body);
        reloadWith(S["models.saved"]);
      } catch (err) {
        showError(redinkForm, err);
      } finally {
        save.disabled = false;
      }
    });
  }

  // -- the model dialog (image and video models) ----------------------------------------------
  const mDialog = $("model-dialog");
  const mForm = $("model-form");
  let editingModel = null;

  function openModel(model) {
    editingModel = model;
    mForm.reset();
    clearError(mForm);
    const type = model?.type || "image";
    const d = model?.definition || {};
    $("model-title").textContent = model ? fmt(S["models.edit_title"], { name: model.name }) : S["models.new_image"];
    $("m-type").value = type;
    $("m-name").value = model?.name || "";
    $("m-name").readOnly = Boolean(model);
    const names = [...(type === "video" ? data.video_providers : data.image_providers)];
    if (d.provider && !names.includes(d.provider)) names.push(d.provider);
    $("m-provider").replaceChildren(...names.map((n) => el("option", { value: n, text: n })));
    if (d.provider) $("m-provider").value = d.provider;
    $("m-model").value = d.model || "";
    const aspect = $("m-aspect");
    const ratio = d.aspect_ratio || (type === "video" ? "16:9" : "1:1");
    if (![...aspect.options].some((o) => o.value === ratio)) aspect.append(el("option", { value: ratio, text: ratio }));
    aspect.value = ratio;
    if (d.result_cache_seconds !== undefined) $("m-cache").value = d.result_cache_seconds;
    if (d.seconds !== undefined) $("m-seconds").value = d.seconds;
    $("m-mode").value = d.mode || "";
    for (const node of mForm.querySelectorAll(".for-image")) node.classList.toggle("hidden", type !== "image");
    for (const node of mForm.querySelectorAll(".for-video")) node.classList.toggle("hidden", type !== "video");
    for (const node of mForm.querySelectorAll(".for-image input")) node.disabled = type !== "image";
    for (const node of mForm.querySelectorAll(".for-video input")) node.disabled = type !== "video";
    mDialog.showModal();
    (model ? $("m-provider") : $("m-name")).focus();
  }

  $("new-image-model").addEventListener("click", () => openModel(null));
  document.querySelector("#models").addEventListener("click", (event) => {
    const button = event.target.closest(".model-edit");
    if (button) openModel(data.models.find((m) => m.name === button.dataset.name));
  });

  mForm.addEventListener("submit", async (event) => {
    event.preventDefault();
    clearError(mForm);
    const form = inkgate.formJson(mForm);
    const name = form.name;
    delete form.name;
    const body = { ...(editingModel?.definition || {}), ...form };
    const save = $("m-save");
    save.disabled = true;
    try {
      await inkgate.api("PUT", `/admin/api/models/${encodeURIComponent(name)}`, body);
      mDialog.close();
      reloadWith(S["models.saved"]);
    } catch (err) {
      showError(mForm, err);
    } finally {
      save.disabled = false;
    }
  });
})();
