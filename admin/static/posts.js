"use strict";
// Posts pages. The list: filters apply on change, a message after a delete. A post:
// edit and redraw pages, retry failed pages, delete, preview; while a job draws it, the
// post is polled every 2 s and its pages update in place.
(() => {
  const FLASH = "inkgate.posts.flash";
  const POLL_MS = 2000;
  const fmt = (text, values) => text.replace(/\{(\w+)\}/g, (m, k) => (k in values ? String(values[k]) : m));

  function listPage(form) {
    const flash = sessionStorage.getItem(FLASH);
    if (flash) {
      sessionStorage.removeItem(FLASH);
      inkgate.toast(flash);
    }
    // a new filter starts at page 1: the form carries no page number
    for (const select of form.querySelectorAll("select")) {
      select.addEventListener("change", () => form.requestSubmit());
    }
  }

  function postPage(data) {
    const S = data.strings;
    const $ = (id) => document.getElementById(id);
    const base = `/admin/api/posts/${encodeURIComponent(data.post.id)}`;
    let post = data.post;
    let timer = null;

    const chipClass = (status) => data.chips[status] || "";
    const when = (seconds) => (seconds ? new Date(seconds * 1000).toISOString().slice(0, 16).replace("T", " ") : "");

    function chip(text, kind) {
      const span = document.createElement("span");
      span.className = "chip" + (kind ? " " + kind : "");
      span.textContent = text;
      return span;
    }

    // -- showing the post -------------------------------------------------------------
    function fillCard(card, page) {
      card.dataset.index = String(page.index);
      const img = card.querySelector(".page-thumb img");
      if (page.thumb_url) {
        if (img.getAttribute("src") !== page.thumb_url) img.src = page.thumb_url;
        img.classList.remove("hidden");
      } else {
        img.removeAttribute("src");
        img.classList.add("hidden");
      }
      card.querySelector(".no-image").classList.toggle("hidden", Boolean(page.thumb_url));
      card.querySelector(".page-thumb").disabled = !page.image_url;
      card.querySelector(".page-no").textContent = fmt(S["posts.page_n"], { n: page.index + 1 });
      card.querySelector(".page-type").textContent = S["posts.type." + page.type] || page.type;
      const status = card.querySelector(".page-status");
      status.className = "chip page-status " + chipClass(page.status);
      status.dataset.status = page.status;
      status.textContent = S["posts.page_status." + page.status] || page.status;
      card.querySelector(".page-text").textContent = page.text;
      const error = card.querySelector(".page-error");
      error.textContent = page.error || "";
      error.classList.toggle("hidden", !page.error);
    }

    function showPages(pages) {
      const box = $("pages");
      const cards = new Map([...box.querySelectorAll(".page-card")].map((c) => [c.dataset.index, c]));
      let previous = null;
      for (const page of pages) {
        let card = cards.get(String(page.index));
        cards.delete(String(page.index));
        if (!card) card = $("page-template").content.firstElementChild.cloneNode(true);
        fillCard(card, page);
        // keep the cards in page order (a new outline adds them)
        const wanted = previous ? previous.nextElementSibling : box.firstElementChild;
        if (wanted !== card) box.insertBefore(card, wanted);
        previous = card;
      }
      for (const stale of cards.values()) stale.remove();
    }

    function showCopy(copy) {
      $("post-copy").classList.toggle("hidden", !copy);
      if (!copy) return;
      const titles = $("copy-titles");
      titles.replaceChildren(...(copy.titles || []).map((title) => {
        const li = document.createElement("li");
        li.textContent = title;
        return li;
      }));
      $("copy-body").textContent = copy.body || copy.copywriting || "";
      $("copy-tags").replaceChildren(...(copy.tags || []).map((tag) => chip("#" + tag)));
    }

    function show(answer) {
      post = answer;
      const status = $("post-status");
      status.className = "chip " + chipClass(post.status);
      status.dataset.status = post.status;
      status.textContent = S["posts.status." + post.status] || post.status;
      const c = post.page_counts;
      const counts = [document.createElement("span")];
      counts[0].textContent = fmt(S["posts.counts"], { done: c.done, total: c.total }) + " ";
      if (c.failed) counts.push(chip(fmt(S["posts.counts_failed"], { count: c.failed }), "bad"));
      if (c.pending) counts.push(chip(fmt(S["posts.counts_pending"], { count: c.pending })));
      $("post-counts").replaceChildren(...counts);
      $("post-running").classList.toggle("hidden", !post.running);
      $("post-updated").textContent = when(post.updated);
      $("post-error").textContent = post.error || "";
      for (const el of document.querySelectorAll(".post-error")) el.classList.toggle("hidden", !post.error);
      const hasImages = post.pages.some((p) => p.image_id);
      for (const link of document.querySelectorAll("a.download")) {
        if (hasImages) {
          link.href = link.dataset.href;
          link.removeAttribute("aria-disabled");
        } else {
          link.removeAttribute("href");
          link.setAttribute("aria-disabled", "true");
        }
      }
      $("retry-failed").disabled = !c.failed;
      showCopy(post.copy);
      $("post-outline").classList.toggle("hidden", !post.outline);
      $("outline-text").textContent = post.outline || "";
      showPages(post.pages);
    }

    // -- polling while a job draws the post ---------------------------------------------
    function poll() {
      if (timer === null) timer = setTimeout(tick, POLL_MS);
    }

    async function tick() {
      let answer;
      try {
        answer = await inkgate.api("GET", base);
      } catch (err) {
        timer = null;
        if (err.status === 404) inkgate.toast(S["posts.gone"], "error");
        else poll(); // a network hiccup: try again
        return;
      }
      timer = null;
      show(answer);
      if (answer.running) poll();
      else inkgate.toast(fmt(S["posts.finished"], { status: S["posts.status." + answer.status] || answer.status }));
    }

    async function change(method, path, body, message) {
      const answer = await inkgate.api(method, base + path, body);
      show(answer);
      if (message) inkgate.toast(message);
      if (answer.running) poll();
      return answer;
    }

    // -- editing a page ---------------------------------------------------------------
    const dialog = $("edit-dialog");
    const form = $("edit-form");
    const text = $("edit-text");
    const formError = form.querySelector(".form-error");
    const drafts = new Map(); // page → text typed before a refusal (409 post_busy)
    let editing = null;

    function openEdit(index) {
      const page = post.pages.find((p) => p.index === index);
      if (!page) return;
      editing = index;
      $("edit-title").textContent = fmt(S["posts.edit_title"], { n: index + 1 });
      text.value = drafts.get(index) ?? page.text;
      formError.classList.add("hidden");
      dialog.showModal();
      text.focus();
    }

    form.addEventListener("submit", async (event) => {
      event.preventDefault();
      const redraw = event.submitter?.value === "redraw";
      const index = editing;
      const buttons = [...form.querySelectorAll("button[type=submit]")];
      for (const b of buttons) b.disabled = true;
      formError.classList.add("hidden");
      try {
        const message = redraw ? fmt(S["posts.redrawing"], { n: index + 1 }) : S["posts.saved"];
        await change("PATCH", `/pages/${index}`, { text: text.value, redraw }, message);
        drafts.delete(index);
        dialog.close();
      } catch (err) {
        if (err.data?.error?.code === "post_busy") {
          // a toast is hidden behind a modal dialog: close it, keep the text for later
          drafts.set(index, text.value);
          dialog.close();
          inkgate.toast(err.message, "error");
        } else {
          formError.textContent = err.message;
          formError.classList.remove("hidden");
        }
      } finally {
        for (const b of buttons) b.disabled = false;
      }
    });

    async function redrawPage(index, button) {
      button.disabled = true;
      try {
        await change("POST", `/pages/${index}/regenerate`, undefined, fmt(S["posts.redrawing"], { n: index + 1 }));
      } catch (err) {
        inkgate.toast(err.message, "error");
      } finally {
        button.disabled = false;
      }
    }

    // -- the preview ------------------------------------------------------------------
    const preview = $("page-preview");

    function openPreview(index) {
      const page = post.pages.find((p) => p.index === index);
      if (!page?.image_url) return;
      $("preview-title").textContent = fmt(S["posts.page_n"], { n: index + 1 });
      $("preview-image").src = page.image_url;
      $("preview-open").href = page.image_url;
      $("preview-full").href = page.image_url;
      preview.showModal();
    }
    preview.addEventListener("close", () => $("preview-image").removeAttribute("src"));

    $("pages").addEventListener("click", (event) => {
      const card = event.target.closest(".page-card");
      if (!card) return;
      const index = Number(card.dataset.index);
      if (event.target.closest(".page-thumb")) openPreview(index);
      else if (event.target.closest(".page-edit")) openEdit(index);
      else if (event.target.closest(".page-redraw")) redrawPage(index, event.target.closest(".page-redraw"));
    });

    // -- the whole post ---------------------------------------------------------------
    $("retry-failed").addEventListener("click", async (event) => {
      const button = event.currentTarget;
      button.disabled = true;
      try {
        await change("POST", "/retry-failed", undefined, S["posts.retrying"]);
      } catch (err) {
        inkgate.toast(err.message, "error");
        button.disabled = !post.page_counts.failed;
      }
    });

    $("delete-post").addEventListener("click", async (event) => {
      const button = event.currentTarget;
      if (!confirm(S["posts.confirm_delete"])) return;
      button.disabled = true;
      try {
        await inkgate.api("DELETE", base);
        sessionStorage.setItem(FLASH, S["posts.deleted"]);
        location.href = "/admin/posts";
      } catch (err) {
        inkgate.toast(err.message, "error");
        button.disabled = false;
      }
    });

    if (post.running) poll();
  }

  const filters = document.getElementById("post-filters");
  const postData = document.getElementById("post-data");
  if (filters) listPage(filters);
  else if (postData) postPage(JSON.parse(postData.textContent));
})();
