"use strict";
// Usage page: times in the browser's time zone (the server writes UTC).
(() => {
  const pad = (n) => String(n).padStart(2, "0");
  for (const time of document.querySelectorAll("#usage-rows time[datetime]")) {
    const d = new Date(time.dateTime);
    if (Number.isNaN(d.getTime())) continue;
    time.title = time.textContent;
    time.textContent = `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} ${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;
  }
})();
