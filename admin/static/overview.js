"use strict";
// Overview: probe every provider on demand and show the result per row.
document.getElementById("check-providers")?.addEventListener("click", async (event) => {
  const button = event.currentTarget;
  const label = button.textContent;
  button.disabled = true;
  button.textContent = button.dataset.checking;
  try {
    const result = await inkgate.api("GET", "/admin/api/providers/test");
    for (const report of result.providers) {
      const cell = document.querySelector(`tr[data-provider="${CSS.escape(report.provider)}"] .health`);
      if (!cell) continue;
      cell.classList.remove("muted");
      cell.replaceChildren();
      for (const check of report.checks) {
        const line = document.createElement("div");
        const chip = document.createElement("span");
        chip.className = "chip " + (check.ok ? "ok" : "bad");
        chip.textContent = `${check.check}: ${check.ok ? "OK" : "✗"}`;
        line.append(chip, ` ${check.detail} (${check.latency_ms} ms)`);
        cell.appendChild(line);
      }
    }
  } catch (err) {
    inkgate.toast(err.message, "error");
  } finally {
    button.disabled = false;
    button.textContent = label;
  }
});
