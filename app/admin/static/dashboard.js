// fleetbreaker's dashboard: reads the fleet every 2 s, hears transitions live, acts
// through the admin API. Plain JavaScript, no build step, no library.
//
// Every URL is relative to the page (/dashboard), so a proxy may serve it under any
// prefix. The admin token lives in this page's memory only, never in a storage that
// another page of the origin could read, and travels only in the Authorization
// header, never in a URL.
"use strict";

(() => {
  const POLL_EVERY = 2000; // ms between two reads of the fleet
  const READ_TIMEOUT = 5000; // ms a read may take before it counts as failed
  const HISTORY = 150; // sparkline points: 5 minutes of reads
  const TRANSITIONS_KEPT = 20;
  const STREAM_RETRY = 5000; // ms before following a refused event stream again
  const STATE_NAMES = {
    closed: "closed",
    half_open: "half-open",
    open: "open",
    forced_open: "forced open",
    disabled: "disabled",
  };
  const QUESTIONS = {
    reset: (name) => `Reset “${name}”: close it and clear its counters, on every replica?`,
    open: (name) => `Force “${name}” open: reject every call, on every replica, until a reset?`,
    disable: (name) => `Disable “${name}”: let every call through, on every replica, until a reset?`,
  };
  const DONE = { reset: "reset", open: "forced open", disable: "disabled" };

  const byId = (id) => document.getElementById(id);
  const cards = new Map(); // upstream name -> {element, history, openUntil}
  let timer = null;
  let reading = false;
  let readAgain = false;
  let pending = null; // the action the confirm dialog is about
  let adminToken = ""; // once accepted, until a 401, "Forget" or the page goes

  // -- reading the fleet ------------------------------------------------------------

  async function read() {
    if (reading) {
      readAgain = true;
      return;
    }
    reading = true;
    clearTimeout(timer);
    try {
      const response = await fetch("dashboard/fleet", {
        cache: "no-store",
        signal: AbortSignal.timeout(READ_TIMEOUT),
      });
      if (!response.ok) throw new Error(`status ${response.status}`);
      const fleet = await response.json();
      fleet.upstreams.forEach(render);
      summarise(fleet.upstreams);
      setStatus(`live · read at ${new Date().toLocaleTimeString()}`);
    } catch (error) {
      setStatus(`cannot read the fleet (${error.message}); trying again`);
    } finally {
      reading = false;
      timer = setTimeout(read, readAgain ? 0 : POLL_EVERY);
      readAgain = false;
    }
  }

  function render(upstream) {
    let card = cards.get(upstream.name);
    if (card === undefined) {
      const element = byId("card").content.firstElementChild.cloneNode(true);
      element.querySelector(".name").textContent = upstream.name;
      element.dataset.name = upstream.name;
      byId("upstreams").append(element);
      card = { element, history: [], openUntil: 0 };
      cards.set(upstream.name, card);
    }
    const element = card.element;
    const state = upstream.guarded ? upstream.state || "unknown" : "none";
    element.dataset.state = state;
    element.dataset.guarded = String(upstream.guarded);
    element.querySelector(".state").textContent = upstream.guarded
      ? STATE_NAMES[upstream.state] || "unknown"
      : "no breaker";
    card.openUntil = performance.now() + upstream.retry_after * 1000;
    card.state = state;
    if (!upstream.guarded) {
      element.querySelector(".open-left").textContent = "sent once, unguarded";
      return;
    }
    const figure = (selector, value) => {
      element.querySelector(selector).textContent = value;
    };
    figure(".calls", upstream.window_calls);
    figure(".failures", upstream.window_failures);
    figure(".slow", upstream.window_slow_calls);
    figure(".rejections", upstream.window_rejections);
    figure(
      ".rate",
      upstream.window_calls ? percent(upstream.window_failures / upstream.window_calls) : "–",
    );
    const bulkhead = element.querySelector(".bulkhead");
    bulkhead.hidden = upstream.max_concurrent == null;
    if (!bulkhead.hidden) {
      figure(".in-flight", `${upstream.in_flight} / ${upstream.max_concurrent}`);
    }
    const where = upstream.backend ? ` · ${upstream.backend}` : " · store unreachable";
    figure(".window", `fleet-wide, last ${upstream.window} s${where}`);
    card.history.push([upstream.window_calls, upstream.window_failures]);
    if (card.history.length > HISTORY) card.history.shift();
    draw(element.querySelector(".sparkline"), card.history);
    tell(card);
  }

  function percent(rate) {
    return `${(100 * rate).toFixed(rate < 0.1 ? 1 : 0)} %`;
  }

  function draw(svg, history) {
    const top = Math.max(1, ...history.map(([calls]) => calls));
    const step = 300 / (HISTORY - 1);
    const start = HISTORY - history.length;
    const points = (index) =>
      history
        .map((values, i) => `${((start + i) * step).toFixed(1)},${(39 - (38 * values[index]) / top).toFixed(1)}`)
        .join(" ");
    svg.querySelector(".line-calls").setAttribute("points", points(0));
    svg.querySelector(".line-failures").setAttribute("points", points(1));
    svg.setAttribute("aria-label", `calls (grey) and failures (red), last ${history.length} reads`);
  }

  // What the state means now: the open time left counts down between two reads.
  function tell(card) {
    const text = card.element.querySelector(".open-left");
    if (card.state === "open") {
      const left = Math.ceil((card.openUntil - performance.now()) / 1000);
      text.textContent = left > 0 ? `open for ${left} s more` : "a trial call is due";
    } else if (card.state === "half_open") {
      text.textContent = "admitting trial calls";
    } else if (card.state === "forced_open") {
      text.textContent = "held open until a reset";
    } else if (card.state === "disabled") {
      text.textContent = "every call goes through, until a reset";
    } else if (card.state === "unknown") {
      text.textContent = "its store cannot be read";
    } else if (card.state !== "none") {
      text.textContent = "";
    }
  }

  function summarise(upstreams) {
    const open = upstreams.filter((u) => u.state === "open" || u.state === "forced_open").length;
    document.title = open ? `(${open} open) fleetbreaker` : "fleetbreaker";
  }

  function setStatus(text) {
    byId("status").textContent = text;
  }

  // -- transitions, live ------------------------------------------------------------

  function follow() {
    const source = new EventSource("dashboard/events");
    source.addEventListener("transition", (message) => {
      let event;
      try {
        event = JSON.parse(message.data);
      } catch {
        return;
      }
      addTransition(event);
      read(); // the figures of the breaker that moved, now rather than at the next read
    });
    source.addEventListener("open", () => {
      document.body.dataset.stream = "open";
    });
    source.addEventListener("error", () => {
      document.body.dataset.stream = "lost";
      if (source.readyState === EventSource.CLOSED) {
        setTimeout(follow, STREAM_RETRY); // refused (too many streams): try later
      }
    });
  }

  function addTransition(event) {
    const item = document.createElement("li");
    const at = document.createElement("time");
    at.dateTime = new Date(event.at).toISOString();
    at.textContent = new Date(event.at).toLocaleTimeString();
    const to = document.createElement("span");
    to.className = "to";
    to.textContent = STATE_NAMES[event.to] || event.to;
    item.dataset.name = event.name;
    item.dataset.to = event.to;
    item.append(at, ` ${event.name}: ${STATE_NAMES[event.from] || event.from} → `, to);
    if (event.reason) item.append(` (${event.reason})`);
    const list = byId("transitions");
    list.prepend(item);
    while (list.children.length > TRANSITIONS_KEPT) list.lastElementChild.remove();
    byId("no-transitions").hidden = true;
  }

  // -- acting, with the admin token -------------------------------------------------

  function ask(name, action) {
    pending = { name, action };
    const known = adminToken !== "";
    byId("confirm-text").textContent = QUESTIONS[action](name);
    byId("token-field").hidden = known;
    byId("token").value = "";
    byId("confirm-error").hidden = true;
    byId("confirm").showModal();
    (known ? byId("confirm-ok") : byId("token")).focus();
  }

  function refuse(text) {
    const error = byId("confirm-error");
    error.textContent = text;
    error.hidden = false;
  }

  async function act(submit) {
    submit.preventDefault();
    if (pending === null) return;
    const { name, action } = pending;
    const token = adminToken || byId("token").value.trim();
    if (!token) {
      refuse("Enter the admin token (BREAKER_ADMIN_TOKEN).");
      return;
    }
    let response;
    try {
      response = await fetch(`admin/breakers/${encodeURIComponent(name)}/${action}`, {
        method: "POST",
        headers: { Authorization: `Bearer ${token}` },
        cache: "no-store",
        signal: AbortSignal.timeout(READ_TIMEOUT),
      });
    } catch (error) {
      refuse(`The gateway did not answer (${error.message}); nothing is known to have changed.`);
      return;
    }
    if (response.status === 401) {
      adminToken = "";
      byId("forget").hidden = true;
      byId("token-field").hidden = false;
      refuse("The admin token was refused (401 unauthorized): nothing was changed.");
      return;
    }
    if (!response.ok) {
      const body = await response.json().catch(() => ({}));
      refuse(`Refused (${response.status}): ${body.detail || body.error || "no detail"}.`);
      return;
    }
    adminToken = token;
    byId("forget").hidden = false;
    pending = null;
    byId("confirm").close();
    notify(`${name}: ${DONE[action]}, fleet-wide.`);
    read();
  }

  function notify(text) {
    const notice = byId("notice");
    notice.textContent = text;
    notice.hidden = false;
  }

  // -- wiring -----------------------------------------------------------------------

  byId("upstreams").addEventListener("click", (click) => {
    const button = click.target.closest("button[data-action]");
    if (button) ask(button.closest(".card").dataset.name, button.dataset.action);
  });
  byId("confirm-form").addEventListener("submit", act);
  byId("confirm-cancel").addEventListener("click", () => {
    pending = null;
    byId("confirm").close();
  });
  byId("forget").addEventListener("click", () => {
    adminToken = "";
    byId("forget").hidden = true;
    notify("The admin token is forgotten.");
  });
  setInterval(() => cards.forEach(tell), 1000);
  read();
  follow();
})();
