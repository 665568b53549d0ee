// The Moonflower console: one page, routed by the URL's hash, talking to /console/api with
// the session cookie (and the CSRF token on every change) and to the inference API with an
// API key. Every piece of text from the server goes in through textContent, never as HTML.
import { lineChart } from "/console/static/chart.js";
import { verifyReceipt } from "/console/static/receipt.js";

const main = document.getElementById("main");
let me = null; // {user, csrf_token}
let flash = null; // a message to show once, above the next page rendered

function h(tag, attributes = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attributes)) {
    if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else if (value === true) node.setAttribute(key, "");
    else if (value !== false && value != null) node.setAttribute(key, String(value));
  }
  for (const child of children.flat()) {
    if (child != null) node.append(child instanceof Node ? child : String(child));
  }
  return node;
}

class ApiError extends Error {
  constructor(status, body) {
    super(body?.error?.message || `HTTP ${status}`);
    this.status = status;
    this.code = body?.error?.code;
  }
}

async function api(method, path, body) {
  const headers = { Accept: "application/json" };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  if (method !== "GET" && me) headers["X-CSRF-Token"] = me.csrf_token;
  const response = await fetch(path, {
    method, headers, credentials: "same-origin",
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const text = await response.text();
  const parsed = text ? JSON.parse(text) : null;
  if (!response.ok) {
    if (response.status === 401 && path !== "/console/api/signin") {
      me = null;
      location.hash = "#/signin";
    }
    throw new ApiError(response.status, parsed);
  }
  return parsed;
}

const usd = (text) => `$${text}`;
const date = (unix) => (unix ? new Date(unix * 1000).toISOString().replace("T", " ").slice(0, 16) : "—");
const errorLine = (error) => h("p", { class: "error", role: "alert" }, error.message);

function table(headers, rows) {
  return h("table", {},
    h("thead", {}, h("tr", {}, headers.map((x) => h("th", { class: x.startsWith("#") ? "num" : "" }, x.replace(/^#/, ""))))),
    h("tbody", {}, rows.length ? rows : h("tr", {}, h("td", { colspan: headers.length, class: "muted" }, "Nothing yet."))));
}

function cells(...values) {
  return h("tr", {}, values.map((v) => (v instanceof Node ? h("td", {}, v) :
    h("td", { class: typeof v === "number" ? "num" : "" }, v ?? "—"))));
}

function moneyChart(title, series) {
  const box = h("div", { class: "chart", "data-chart": title });
  lineChart(box, series.map((d) => ({ label: d.day, value: d.amount_micro_usd / 1e6 })), {
    format: (v) => `$${v.toFixed(v >= 1 ? 2 : 4)}`, title,
  });
  return box;
}

// --- signing in and up ------------------------------------------------------------------

function authPage(kind) {
  const isSignUp = kind === "signup";
  const status = h("div", { "aria-live": "polite" });
  const form = h("form", { class: "stack", onsubmit: async (event) => {
    event.preventDefault();
    const data = Object.fromEntries(new FormData(form));
    if (!data.invite_code) delete data.invite_code;
    try {
      me = await api("POST", `/console/api/${kind}`, data);
      afterSignIn();
    } catch (error) { status.replaceChildren(errorLine(error)); }
  } },
    h("label", {}, "Email", h("input", { name: "email", type: "email", autocomplete: "email", required: true })),
    h("label", {}, "Password", h("input", { name: "password", type: "password", minlength: 10,
      autocomplete: isSignUp ? "new-password" : "current-password", required: true })),
    isSignUp ? h("label", {}, "Invitation code (if you were given one)", h("input", { name: "invite_code" })) : null,
    h("button", { type: "submit" }, isSignUp ? "Create account" : "Sign in"), status);
  return [h("h1", {}, isSignUp ? "Create your account" : "Sign in"), form,
    h("p", {}, isSignUp ? h("a", { href: "#/signin" }, "I have an account") : h("a", { href: "#/signup" }, "Create an account"))];
}

function afterSignIn() {
  const pending = sessionStorage.getItem("mf-after-signin");
  sessionStorage.removeItem("mf-after-signin");
  if (pending) { location.href = pending; return; }
  location.hash = "#/overview";
  render();
}

// --- consumer pages -----------------------------------------------------------------------

async function overviewPage() {
  const [balance, spending] = await Promise.all([api("GET", "/console/api/balance"), api("GET", "/console/api/spending?days=30")]);
  return [h("h1", {}, "Overview"),
    h("section", { class: "cards" },
      h("div", { class: "card" }, h("h2", {}, "Available"), h("p", { class: "big", id: "balance-available" }, usd(balance.available_usd))),
      h("div", { class: "card" }, h("h2", {}, "Balance"), h("p", { class: "big", id: "balance-total" }, usd(balance.balance_usd))),
      h("div", { class: "card" }, h("h2", {}, "Held for running jobs"), h("p", { class: "big" }, usd(balance.held_usd))),
      h("div", { class: "card" }, h("h2", {}, "Earned by your machines"), h("p", { class: "big" }, usd(balance.provider.balance_usd)))),
    h("h2", {}, "Spending, last 30 days"), moneyChart("Spending per day", spending.data)];
}

async function usagePage() {
  const page = await api("GET", "/console/api/usage?limit=100");
  return [h("h1", {}, "Usage"), table(["When", "Model", "Status", "#Prompt tokens", "#Output tokens", "#Cost"],
    page.data.map((u) => cells(date(u.created), u.model, u.status, u.prompt_tokens, u.completion_tokens, usd(u.cost_usd))))];
}

async function keysPage() {
  const status = h("div", { "aria-live": "polite" });
  const list = h("div");
  async function reload() {
    const keys = await api("GET", "/console/api/keys");
    list.replaceChildren(table(["Name", "Key", "Created", "Last used", "State", ""], keys.data.map((k) => cells(
      k.name, h("code", {}, k.display_prefix), date(k.created), date(k.last_used), k.revoked ? "revoked" : "active",
      k.revoked ? "" : h("span", {},
        h("button", { class: "secondary", type: "button", onclick: () => rename(k) }, "Rename"), " ",
        h("button", { class: "danger", type: "button", "data-revoke": k.id, onclick: () => revoke(k) }, "Revoke"))))));
  }
  async function rename(k) {
    const name = prompt("New name for this key", k.name || "");
    if (!name) return;
    try { await api("PATCH", `/console/api/keys/${k.id}`, { name }); await reload(); } catch (e) { status.replaceChildren(errorLine(e)); }
  }
  async function revoke(k) {
    try {
      await api("POST", `/console/api/keys/${k.id}/revoke`);
      if (sessionStorage.getItem("mf-key-id") === k.id) { sessionStorage.removeItem("mf-key"); sessionStorage.removeItem("mf-key-id"); }
      status.replaceChildren(h("p", { class: "ok" }, `Revoked ${k.display_prefix}`));
      await reload();
    } catch (e) { status.replaceChildren(errorLine(e)); }
  }
  const form = h("form", { class: "inline", onsubmit: async (event) => {
    event.preventDefault();
    try {
      const made = await api("POST", "/console/api/keys", { name: new FormData(form).get("name") || null });
      sessionStorage.setItem("mf-key", made.key);
      sessionStorage.setItem("mf-key-id", made.id);
      status.replaceChildren(h("div", { class: "notice" },
        h("p", {}, "Your new key. Copy it now: it is shown only this once."),
        h("code", { id: "new-key" }, made.key), " ",
        h("button", { type: "button", class: "secondary", onclick: () => navigator.clipboard?.writeText(made.key) }, "Copy")));
      form.reset();
      await reload();
    } catch (e) { status.replaceChildren(errorLine(e)); }
  } }, h("label", {}, "Name", h("input", { name: "name", placeholder: "laptop", maxlength: 200 })), h("button", { type: "submit" }, "Create key"));
  await reload();
  return [h("h1", {}, "API keys"), h("p", { class: "muted" }, "Keys call the OpenAI- and Anthropic-compatible API and spend from your balance."), form, status, list];
}

async function pricingPage() {
  const pricing = await api("GET", "/v1/pricing");
  const rows = [pricing.default, ...pricing.prices].map((p) => cells(p.model, usd(p.input_usd_per_million_tokens), usd(p.output_usd_per_million_tokens)));
  return [h("h1", {}, "Pricing"), h("p", { class: "muted" }, "Per million tokens."), table(["Model", "#Input", "#Output"], rows)];
}

async function playgroundPage() {
  const answer = h("div", { class: "answer", id: "answer", "aria-live": "polite" });
  const receipt = h("div", { class: "receipt", id: "receipt" });
  const status = h("div");
  const keyInput = h("input", { name: "key", type: "password", value: sessionStorage.getItem("mf-key") || "", placeholder: "mf-…", required: true });
  const modelSelect = h("select", { name: "model" });
  const models = await fetch("/v1/models", { headers: { Authorization: `Bearer ${keyInput.value}` } }).then((r) => (r.ok ? r.json() : { data: [] })).catch(() => ({ data: [] }));
  for (const m of models.data) modelSelect.append(h("option", { value: m.id }, m.id));
  if (!models.data.length) modelSelect.append(h("option", { value: "default" }, "default"));
  const form = h("form", { class: "stack wide", onsubmit: async (event) => {
    event.preventDefault();
    answer.textContent = ""; receipt.replaceChildren(); status.replaceChildren();
    try {
      await streamChat(keyInput.value, modelSelect.value, new FormData(form).get("message"), answer, receipt);
    } catch (e) { status.replaceChildren(errorLine(e)); }
  } },
    h("label", {}, "API key", keyInput), h("label", {}, "Model", modelSelect),
    h("label", {}, "Message", h("textarea", { name: "message", required: true }, "Write a haiku about the moon.")),
    h("button", { type: "submit" }, "Send"));
  return [h("h1", {}, "Playground"), form, status, h("h2", {}, "Answer"), answer, receipt];
}

async function streamChat(key, model, message, answer, receiptBox) {
  const response = await fetch("/v1/chat/completions", {
    method: "POST",
    headers: { "Content-Type": "application/json", Authorization: `Bearer ${key}` },
    body: JSON.stringify({ model, messages: [{ role: "user", content: message }], stream: true, max_tokens: 64,
      stream_options: { include_usage: true } }),
  });
  if (!response.ok) throw new ApiError(response.status, await response.json().catch(() => null));
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "", shown = null, usage = null;
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += decoder.decode(value, { stream: true });
    let cut;
    while ((cut = buffer.indexOf("\n\n")) >= 0) {
      const frame = buffer.slice(0, cut); buffer = buffer.slice(cut + 2);
      const data = frame.split("\n").filter((l) => l.startsWith("data: ")).map((l) => l.slice(6)).join("\n");
      if (!data || data === "[DONE]") continue;
      const chunk = JSON.parse(data);
      if (chunk.error) throw new Error(chunk.error.message);
      const delta = chunk.choices?.[0]?.delta?.content;
      if (delta) answer.textContent += delta;
      if (chunk.moonflower_receipt) shown = chunk.moonflower_receipt;
      if (chunk.usage) usage = chunk.usage;
    }
  }
  if (shown) await showReceipt(key, shown, usage, receiptBox);
}

async function showReceipt(key, streamed, usage, box) {
  const stored = await fetch(`/v1/receipts/${encodeURIComponent(streamed.job_id)}`, { headers: { Authorization: `Bearer ${key}` } }).then((r) => r.json());
  let verdict;
  try {
    const checked = await verifyReceipt(stored);
    verdict = checked.isSigned && checked.namesKey
      ? h("p", { class: "ok", id: "receipt-verdict" }, "✓ Signature verified in your browser: the provider's key signed this receipt.")
      : h("p", { class: "error", id: "receipt-verdict" }, "✗ The receipt's signature does not verify.");
    const r = checked.parsed;
    box.replaceChildren(h("h2", {}, "Receipt"), verdict, h("dl", {},
      h("dt", {}, "Job"), h("dd", { class: "mono" }, streamed.job_id),
      h("dt", {}, "Cost"), h("dd", { id: "receipt-cost" }, streamed.cost_usd ? usd(streamed.cost_usd) : "—"),
      h("dt", {}, "Tokens"), h("dd", {}, usage ? `${usage.prompt_tokens} in, ${usage.completion_tokens} out` : "—"),
      h("dt", {}, "Model weights"), h("dd", { class: "mono" }, r.model_sha256 ?? "—"),
      h("dt", {}, "Output hash"), h("dd", { class: "mono" }, r.output_sha256 ?? "—"),
      h("dt", {}, "Provider key"), h("dd", { class: "mono" }, checked.fingerprint)));
  } catch (e) {
    box.replaceChildren(h("h2", {}, "Receipt"), errorLine(e));
  }
}

// --- provider operators --------------------------------------------------------------------

async function machinesPage() {
  const [machines, earnings, logins] = await Promise.all([
    api("GET", "/console/api/machines"), api("GET", "/console/api/earnings?days=30"), api("GET", "/console/api/device")]);
  return [h("h1", {}, "Your machines"),
    h("p", { class: "muted" }, "Connect a machine with ", h("code", {}, `moonflower provider login --coordinator ${location.origin}`), " and approve its code here."),
    h("form", { class: "inline", onsubmit: (event) => { event.preventDefault(); location.href = `/console/device?code=${encodeURIComponent(new FormData(event.target).get("code"))}`; } },
      h("label", {}, "Code shown by the machine", h("input", { name: "code", placeholder: "BCDF-GHJK", required: true })), h("button", { type: "submit" }, "Look up")),
    table(["Machine key", "State", "Trust", "Models", "#Tokens/s", "#Jobs", "#Failures", "Last seen"], machines.data.map((m) => cells(
      h("code", {}, m.fingerprint.slice(0, 16) + "…"), m.untrusted_reason ? `untrusted: ${m.untrusted_reason}` : (m.online ? "online" : "offline"),
      m.live?.trust_level ?? "—", m.live ? m.live.models.join(", ") : "—", m.live?.tokens_per_s ?? "—", m.jobs, m.failures, date(m.last_seen)))),
    h("section", { class: "cards" },
      h("div", { class: "card" }, h("h2", {}, "Earned in all"), h("p", { class: "big", id: "earned-total" }, usd(earnings.total_earned_usd))),
      h("div", { class: "card" }, h("h2", {}, "Withdrawable"), h("p", { class: "big" }, usd(earnings.balance.withdrawable_usd)))),
    h("h2", {}, "Earnings, last 30 days"), moneyChart("Earnings per day", earnings.data),
    h("h2", {}, "Device logins"), table(["Code", "Machine", "Status", "Asked"], logins.data.map((d) => cells(d.user_code, d.machine_name, d.status, date(d.created))))];
}

async function devicePage() {
  const code = new URLSearchParams(location.search).get("code") || "";
  if (!code) return [h("h1", {}, "Approve a machine"), h("p", {}, "Open the link the machine printed, or enter its code on the Machines page.")];
  const status = h("div", { "aria-live": "polite", id: "device-status" });
  let login;
  try { login = await api("GET", `/console/api/device/${encodeURIComponent(code)}`); } catch (e) { return [h("h1", {}, "Approve a machine"), errorLine(e)]; }
  const decide = async (verb) => {
    try {
      const done = await api("POST", `/console/api/device/${verb}`, { user_code: login.user_code });
      status.replaceChildren(h("p", { class: "ok" }, done.status === "approved" ? `Approved. ${done.machine_name} will connect in a moment; it earns for your account.` : "Denied."));
      buttons.remove();
    } catch (e) { status.replaceChildren(errorLine(e)); }
  };
  const buttons = h("p", {}, h("button", { type: "button", id: "approve", onclick: () => decide("approve") }, "Approve"), " ",
    h("button", { type: "button", class: "danger", id: "deny", onclick: () => decide("deny") }, "Deny"));
  return [h("h1", {}, "Approve a machine"), h("p", { class: "code-box" }, login.user_code),
    h("p", {}, `"${login.machine_name}" asks to serve jobs and earn for your account. Approve only if you started `, h("code", {}, "moonflower provider login"), " on it and it shows this same code."),
    login.status === "pending" ? buttons : h("p", { class: "muted" }, `This login is ${login.status}.`), status];
}

// --- the operator --------------------------------------------------------------------------

async function adminPage() {
  const status = h("div", { "aria-live": "polite" });
  const [fleet, accounts, pricing] = await Promise.all([api("GET", "/console/api/admin/providers"), api("GET", "/console/api/admin/accounts"), api("GET", "/v1/pricing")]);
  const creditForm = h("form", { class: "inline", onsubmit: async (event) => {
    event.preventDefault();
    const data = Object.fromEntries(new FormData(creditForm));
    try {
      const after = await api("POST", "/console/api/admin/credit", data);
      flash = `${after.account_name} now has ${usd(after.balance_usd)}`;
      await render();
    } catch (e) { status.replaceChildren(errorLine(e)); }
  } },
    h("label", {}, "Account", h("select", { name: "account_id" }, accounts.data.filter((a) => a.kind === "consumer" || a.kind === "provider").map((a) => h("option", { value: a.account_id }, a.account_name)))),
    h("label", {}, "Dollars", h("input", { name: "usd", inputmode: "decimal", placeholder: "10.00", required: true })),
    h("button", { type: "submit" }, "Grant credit"));
  const priceForm = h("form", { class: "inline", onsubmit: async (event) => {
    event.preventDefault();
    const data = Object.fromEntries(new FormData(priceForm));
    try {
      await api("POST", "/console/api/admin/prices", { model: data.model, input_price: Number(data.input_price), output_price: Number(data.output_price) });
      flash = `Price of ${data.model} set.`;
      await render();
    } catch (e) { status.replaceChildren(errorLine(e)); }
  } },
    h("label", {}, "Model", h("input", { name: "model", required: true, placeholder: "*" })),
    h("label", {}, "Input µ$/Mtok", h("input", { name: "input_price", type: "number", min: 0, required: true })),
    h("label", {}, "Output µ$/Mtok", h("input", { name: "output_price", type: "number", min: 0, required: true })),
    h("button", { type: "submit" }, "Set price"));
  const clear = async (fingerprint) => {
    try { await api("POST", `/console/api/admin/identities/${fingerprint}/clear`); status.replaceChildren(h("p", { class: "ok" }, "Cleared; it is admitted when it next connects.")); } catch (e) { status.replaceChildren(errorLine(e)); }
  };
  return [h("h1", {}, "Operator"), status,
    h("h2", {}, "Live providers (this replica)"),
    table(["Provider", "Account", "Trust", "Models", "#Load", "#Tokens/s", "#Jobs", "#Failures", "#Reliability"], fleet.data.map((p) => cells(
      h("code", {}, p.provider_id), p.account_name, h("span", { "data-trust": p.trust_level }, p.trust_level), p.models.join(", "),
      `${p.active_jobs}/${p.slots}`, p.tokens_per_s ?? "—", p.reputation.jobs, p.reputation.failures, p.reputation.reliability))),
    h("h2", {}, "Untrusted identities"),
    table(["Key", "Account", "Reason", ""], fleet.untrusted.map((u) => cells(h("code", {}, u.fingerprint.slice(0, 16) + "…"), u.account_name, u.reason,
      h("button", { type: "button", class: "secondary", onclick: () => clear(u.fingerprint) }, "Clear")))),
    h("h2", {}, "Accounts"), creditForm,
    table(["Account", "Kind", "#Balance", "#Held", "#Available"], accounts.data.map((a) => cells(a.account_name, a.kind, usd(a.balance_usd), usd(a.held_usd), usd(a.available_usd)))),
    h("h2", {}, "Prices"), priceForm,
    table(["Model", "#Input", "#Output"], [pricing.default, ...pricing.prices].map((p) => cells(p.model, usd(p.input_usd_per_million_tokens), usd(p.output_usd_per_million_tokens))))];
}

// --- routing ---------------------------------------------------------------------------------

const PAGES = { overview: overviewPage, usage: usagePage, keys: keysPage, pricing: pricingPage,
  playground: playgroundPage, machines: machinesPage, admin: adminPage };

async function render() {
  const isDevice = location.pathname === "/console/device";
  const route = (location.hash.replace(/^#\//, "") || "overview").split("?")[0];
  if (!me && route !== "signup") {
    try { me = await api("GET", "/console/api/me"); } catch { me = null; }
  }
  document.getElementById("nav").hidden = !me;
  document.getElementById("nav-admin").hidden = !me?.user?.is_admin;
  for (const link of document.querySelectorAll("nav a")) {
    if (!isDevice && link.getAttribute("href") === `/console/#/${route}`) link.setAttribute("aria-current", "page");
    else link.removeAttribute("aria-current");
  }
  let content;
  try {
    if (!me) {
      if (isDevice) sessionStorage.setItem("mf-after-signin", location.href);
      content = authPage(route === "signup" ? "signup" : "signin");
    } else if (isDevice) {
      content = await devicePage();
    } else {
      content = await (PAGES[route] || overviewPage)();
    }
  } catch (error) {
    content = [errorLine(error)];
  }
  if (flash) { content = [h("p", { class: "ok", role: "status" }, flash), ...content]; flash = null; }
  main.replaceChildren(...content);
  main.dataset.page = isDevice ? "device" : (me ? route : "signin");
  main.focus();
}

document.getElementById("signout").addEventListener("click", async () => {
  try { await api("POST", "/console/api/signout"); } finally { me = null; location.href = "/console/#/signin"; }
});
window.addEventListener("hashchange", render);
render();
