import { lineChart } from "/console/static/chart.js";

const number = (n) => Number(n).toLocaleString("en-US");

async function refresh() {
  const response = await fetch("/v1/stats");
  if (!response.ok) return;
  const stats = await response.json();
  document.getElementById("providers").textContent = number(stats.providers_online);
  document.getElementById("tps").textContent = stats.tokens_per_second.toFixed(2);
  document.getElementById("requests").textContent = number(stats.all_time.requests);
  document.getElementById("requests-window").textContent =
    `${number(stats.window.requests)} in the last ${stats.window_minutes} minutes`;
  document.getElementById("tokens").textContent = number(stats.all_time.tokens);
  lineChart(document.getElementById("chart"), stats.per_minute.map((m) => ({
    label: new Date(m.minute * 1000).toISOString().slice(11, 16), value: m.tokens,
  })), { format: number, title: "Tokens per minute" });
  const rows = stats.models.map((m) => {
    const tr = document.createElement("tr");
    const trust = Object.entries(m.by_trust_level_here).map(([k, v]) => `${k}: ${v}`).join(", ");
    for (const text of [m.model, number(m.providers), trust || "—"]) {
      const td = document.createElement("td"); td.textContent = text; tr.appendChild(td);
    }
    return tr;
  });
  document.getElementById("models").replaceChildren(...rows);
}

refresh();
setInterval(refresh, 15000);
