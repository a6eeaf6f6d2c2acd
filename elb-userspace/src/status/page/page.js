"use strict";
(function () {
  var INTERVAL_MS = 3000;
  var ENDPOINT = "/__erulb__/status.json";
  var TOKEN_KEY = "elb-admin-token";
  var STATUS_ORDER = ["down", "starting", "draining", "up", "unchecked", "out"];
  var STATUS_LABEL = {
    up: "up", down: "down", starting: "starting", draining: "draining",
    out: "out of service", unchecked: "not checked"
  };
  var previous = null; // {t, upstreams: {name: {requests, errors}}, l4: {name: {...}}}
  var lastOk = null;
  var timer = null;

  window.addEventListener("error", function (event) {
    document.documentElement.setAttribute("data-js-error", String(event.message));
  });

  function $(id) { return document.getElementById(id); }

  // Builds an element; children are nodes or strings (always text nodes).
  function el(tag, attrs, children) {
    var node = document.createElement(tag);
    if (attrs) {
      Object.keys(attrs).forEach(function (key) {
        var value = attrs[key];
        if (value === null || value === undefined || value === false) return;
        if (key === "class") node.className = value;
        else if (key === "text") node.textContent = value;
        else node.setAttribute(key, value === true ? "" : String(value));
      });
    }
    (children || []).forEach(function (child) {
      if (child === null || child === undefined) return;
      node.appendChild(typeof child === "string" || typeof child === "number"
        ? document.createTextNode(String(child)) : child);
    });
    return node;
  }

  function replace(container, nodes) {
    while (container.firstChild) container.removeChild(container.firstChild);
    nodes.forEach(function (n) { container.appendChild(n); });
  }

  function token() {
    var hash = window.location.hash.replace(/^#/, "");
    var params = new URLSearchParams(hash);
    var fromHash = params.get("token");
    if (fromHash) {
      sessionStorage.setItem(TOKEN_KEY, fromHash);
      // Out of the address bar, the history and screenshots.
      history.replaceState(null, "", window.location.pathname + window.location.search);
    }
    return sessionStorage.getItem(TOKEN_KEY);
  }

  function duration(seconds) {
    if (seconds === null || seconds === undefined) return "";
    seconds = Number(seconds);
    if (seconds < 60) return (seconds < 10 ? seconds.toFixed(1) : Math.round(seconds)) + "s";
    var m = Math.floor(seconds / 60);
    if (m < 60) return m + "m " + Math.round(seconds % 60) + "s";
    var h = Math.floor(m / 60);
    if (h < 48) return h + "h " + (m % 60) + "m";
    return Math.floor(h / 24) + "d " + (h % 24) + "h";
  }

  function count(n) {
    n = Number(n || 0);
    if (n >= 1e9) return (n / 1e9).toFixed(1) + "G";
    if (n >= 1e6) return (n / 1e6).toFixed(1) + "M";
    if (n >= 1e4) return (n / 1e3).toFixed(1) + "k";
    return String(n);
  }

  function bytes(n) {
    n = Number(n || 0);
    var units = ["B", "KiB", "MiB", "GiB", "TiB"];
    var i = 0;
    while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
    return (i === 0 ? n : n.toFixed(1)) + " " + units[i];
  }

  function rateText(perSecond) {
    if (perSecond === null) return "–";
    if (perSecond >= 100) return Math.round(perSecond) + "/s";
    return perSecond.toFixed(1) + "/s";
  }

  function statusBadge(status) {
    return el("span", { "class": "status st-" + status, text: STATUS_LABEL[status] || status });
  }

  // Per-second rates from two samples; null until there are two, or when
  // a counter went backwards (elb restarted).
  function delta(now, before, seconds) {
    // A counter at 0 is a reading too: test for absence, not falsiness.
    if (typeof now !== "number" || typeof before !== "number") return null;
    if (seconds <= 0 || now < before) return null;
    return (now - before) / seconds;
  }

  function rates(doc, t) {
    var seconds = previous ? (t - previous.t) / 1000 : 0;
    var out = { upstreams: {}, sample: { t: t, upstreams: {} } };
    (doc.upstreams || []).forEach(function (u) {
      if (!u.traffic) return;
      out.sample.upstreams[u.name] = u.traffic;
      var before = previous && previous.upstreams[u.name];
      var reqs = before ? delta(u.traffic.requests, before.requests, seconds) : null;
      var errs = before ? delta(u.traffic.errors_5xx, before.errors_5xx, seconds) : null;
      out.upstreams[u.name] = {
        rps: reqs,
        errorRate: reqs === null || errs === null ? null : (reqs > 0 ? errs / reqs : 0)
      };
    });
    return out;
  }

  function renderSummary(doc, computed) {
    var s = doc.summary;
    var counts = s.servers;
    var failOpen = s.upstreams_fail_open.length;
    var cards = [
      card("Servers up", counts.up, counts.up > 0 ? "up" : "", "of " + s.servers_total + " servers", "sum-up"),
      card("Servers down", counts.down, counts.down > 0 ? "down" : "up", counts.down > 0 ? "failing health checks" : "none failing", "sum-down"),
      card("In transition", counts.starting + counts.draining,
        counts.starting + counts.draining > 0 ? "warn" : "", counts.starting + " starting · " + counts.draining + " leaving", "sum-transit"),
      card("Upstreams", s.upstreams_total, failOpen > 0 ? "bad" : "info",
        failOpen > 0 ? failOpen + " failing open" : "none failing open", "sum-upstreams"),
      card("Listeners", s.listeners_total - s.listeners_failed, s.listeners_failed > 0 ? "bad" : "info",
        s.listeners_failed > 0 ? s.listeners_failed + " failed" : "all serving", "sum-listeners"),
      card("L4 services", s.services_total, "info", (doc.l4 && doc.l4.dataplane ? doc.l4.dataplane : "no") + " plane", "sum-l4")
    ];
    if (s.traffic_counted) {
      var total = null, errors = null;
      Object.keys(computed.upstreams).forEach(function (name) {
        var r = computed.upstreams[name];
        if (r.rps === null) return;
        total = (total || 0) + r.rps;
        errors = (errors || 0) + r.rps * (r.errorRate || 0);
      });
      var errorRate = total === null ? null : (total > 0 ? errors / total : 0);
      cards.push(card("Requests", rateText(total), "info", "all upstreams", "sum-rps"));
      cards.push(card("5xx rate", errorRate === null ? "–" : (errorRate * 100).toFixed(1) + "%",
        errorRate > 0.01 ? "down" : (errorRate === null ? "" : "up"), "of responses", "sum-errors"));
    }
    replace($("summary"), cards);
  }

  function card(label, value, tone, sub, id) {
    return el("div", { "class": "card " + (tone || ""), id: id }, [
      el("div", { "class": "label", text: label }),
      el("div", { "class": "value", text: String(value) }),
      el("div", { "class": "sub", text: sub })
    ]);
  }

  function renderProblems(doc) {
    var problems = doc.summary.problems || [];
    $("problems").hidden = problems.length === 0;
    replace($("problem-list"), problems.map(function (p) { return el("li", { text: p }); }));
  }

  function badness(u) {
    var down = u.servers.filter(function (s) { return s.status === "down"; }).length;
    return (u.fail_open ? 1000 : 0) + down;
  }

  function renderUpstreams(doc, computed) {
    var list = (doc.upstreams || []).slice().sort(function (a, b) {
      return badness(b) - badness(a) || (a.name < b.name ? -1 : 1);
    });
    if (list.length === 0) {
      replace($("upstreams"), [el("div", { "class": "empty", text: "No upstreams configured." })]);
      return;
    }
    replace($("upstreams"), list.map(function (u) { return upstreamBlock(u, computed.upstreams[u.name], doc.summary.traffic_counted); }));
  }

  function upstreamBlock(u, r, counted) {
    var servers = u.servers.slice().sort(function (a, b) {
      return STATUS_ORDER.indexOf(a.status) - STATUS_ORDER.indexOf(b.status) || (a.address < b.address ? -1 : 1);
    });
    var byStatus = {};
    servers.forEach(function (s) { byStatus[s.status] = (byStatus[s.status] || 0) + 1; });
    var badges = [];
    if (u.fail_open) badges.push(el("span", { "class": "pill pill-down", text: "FAIL-OPEN: no healthy server" }));
    if (!u.health_checks) badges.push(el("span", { "class": "pill pill-muted", text: "no health checks" }));
    if (!u.configured) badges.push(el("span", { "class": "pill pill-warn", text: "removed, draining" }));
    var used = [];
    if (u.domains.length) used.push("domains: " + u.domains.join(", "));
    if (u.services.length) used.push("L4: " + u.services.join(", "));
    var healthText = STATUS_ORDER.filter(function (st) { return byStatus[st]; })
      .map(function (st) { return byStatus[st] + " " + STATUS_LABEL[st]; }).join(" · ");
    var rateNodes = [];
    if (counted) {
      var err = r ? r.errorRate : null;
      rateNodes.push(el("div", { "class": "rate", "data-rps": r && r.rps !== null ? r.rps.toFixed(3) : "" }, [
        el("div", { "class": "num", text: rateText(r ? r.rps : null) }), el("div", { "class": "cap", text: "requests" })
      ]));
      rateNodes.push(el("div", { "class": "rate " + (err === null ? "" : (err > 0.01 ? "bad" : "ok")) }, [
        el("div", { "class": "num", text: err === null ? "–" : (err * 100).toFixed(1) + "%" }),
        el("div", { "class": "cap", text: "5xx" })
      ]));
      rateNodes.push(el("div", { "class": "rate" }, [
        el("div", { "class": "num", text: count(u.traffic.requests) }), el("div", { "class": "cap", text: "total" })
      ]));
    }
    var head = el("div", { "class": "up-head" }, [
      el("div", null, [
        el("div", { "class": "up-name" }, [el("span", { text: u.name })].concat(badges)),
        el("div", { "class": "up-used", text: used.join(" · ") || "not used by any domain or service" })
      ]),
      el("div", null, [
        el("div", { "class": "bar", title: healthText }, servers.map(function (s) {
          return el("span", { "class": "s-" + s.status, title: s.address + ": " + STATUS_LABEL[s.status] });
        })),
        el("div", { "class": "bar-label", text: healthText || "no servers" })
      ]),
      el("div", { "class": "rates" }, rateNodes)
    ]);
    var rows = servers.map(function (s) {
      var detail = [];
      if (s.drain_seconds_left !== undefined) detail.push("drain ends in " + duration(s.drain_seconds_left));
      if (s.slow_start_weight_percent !== undefined) detail.push("slow start " + s.slow_start_weight_percent + "%");
      if (s.last_check) detail.push("last check " + (s.last_check.passed ? "passed" : "failed") + " " + duration(s.last_check.seconds_ago) + " ago, " + s.last_check.latency_ms + " ms");
      return el("tr", {
        "class": "row-" + s.status, "data-upstream": u.name, "data-server": s.address, "data-status": s.status
      }, [
        el("td", null, [statusBadge(s.status)]),
        el("td", { "class": "mono", text: s.address }),
        el("td", { "class": "num", text: s.removed ? "–" : String(s.weight) + (s.backup ? " (backup)" : "") }),
        el("td", { text: s.zone || "–" }),
        el("td", { "class": "num", text: duration(s.seconds_in_state) }),
        el("td", null, [
          el("div", { "class": "reason", text: s.reason || "" }),
          detail.length ? el("div", { "class": "reason", text: detail.join(" · ") }) : null
        ])
      ]);
    });
    var table = el("table", { "class": "servers" }, [
      el("colgroup", null, ["health", "server", "weight", "zone", "for", "why"].map(function (c) {
        return el("col", { "class": "c-" + c });
      })),
      el("thead", null, [el("tr", null, [
        el("th", { text: "Health" }), el("th", { text: "Server" }), el("th", { "class": "num", text: "Weight" }),
        el("th", { text: "Zone" }), el("th", { "class": "num", text: "For" }), el("th", { text: "Why" })
      ])]),
      el("tbody", null, rows)
    ]);
    var bad = u.fail_open || byStatus.down > 0;
    return el("div", { "class": "upstream" + (bad ? " bad" : ""), "data-upstream": u.name, "data-fail-open": u.fail_open ? "1" : "0" }, [head, rows.length ? table : el("div", { "class": "empty", text: "No servers." })]);
  }

  function renderDomains(doc) {
    var health = {};
    (doc.upstreams || []).forEach(function (u) {
      health[u.name] = u.fail_open || u.servers.some(function (s) { return s.status === "down"; });
    });
    var domains = doc.domains || [];
    if (domains.length === 0) {
      replace($("domains"), [el("div", { "class": "empty", text: "No domains configured." })]);
      return;
    }
    replace($("domains"), [el("table", null, [
      el("thead", null, [el("tr", null, [el("th", { text: "Domain" }), el("th", { text: "Sends to" })])]),
      el("tbody", null, domains.map(function (d) {
        var chips = d.upstreams.map(function (name) {
          return el("span", { "class": "chip " + (health[name] ? "bad" : "ok"), text: name });
        }).concat(d.servers.map(function (addr) { return el("span", { "class": "chip mono", text: addr }); }));
        return el("tr", null, [el("td", { "class": "mono", text: d.name }), el("td", null, [el("div", { "class": "chips" }, chips)])]);
      }))
    ])]);
  }

  function renderListeners(doc) {
    var listeners = doc.listeners || [];
    replace($("listeners"), [el("table", null, [
      el("thead", null, [el("tr", null, [el("th", { text: "Listener" }), el("th", { text: "Address" }), el("th", { text: "Protocol" }), el("th", { text: "State" })])]),
      el("tbody", null, listeners.map(function (l) {
        var tone = l.status === "serving" ? "pill-up" : (l.status === "failed" ? "pill-down" : "pill-info");
        return el("tr", { "data-listener": l.address, "data-status": l.status }, [
          el("td", { text: l.name || "--listen" }),
          el("td", { "class": "mono", text: l.address }),
          el("td", { text: l.protocol + (l.http2 ? " + h2" : "") }),
          el("td", null, [el("span", { "class": "pill " + tone, text: l.status }), l.error ? el("div", { "class": "reason", text: l.error }) : null])
        ]);
      }))
    ])]);
  }

  function renderL4(doc) {
    var l4 = doc.l4 || {};
    var head = [];
    if (l4.dataplane) head.push(el("span", { "class": "pill pill-info", text: l4.dataplane + " data plane" }));
    else head.push(el("span", { "class": "pill pill-warn", text: l4.error || "no data plane" }));
    Object.keys(l4.interfaces || {}).forEach(function (iface) {
      head.push(el("span", { "class": "pill pill-up", "data-iface": iface, text: iface + ": XDP " + l4.interfaces[iface] }));
    });
    replace($("dataplane"), [el("span", { "class": "chips" }, head)]);
    var services = l4.services || [];
    if (services.length === 0) {
      replace($("l4"), [el("div", { "class": "empty", text: "No L4 services configured." })]);
      return;
    }
    var rows = [];
    services.forEach(function (svc) {
      var c = svc.counters || {};
      var traffic = [];
      if (c.packets !== undefined) traffic.push(count(c.packets) + " packets");
      if (c.new_flows !== undefined) traffic.push(count(c.new_flows) + " flows");
      if (c.active_flows !== undefined) traffic.push(count(c.active_flows) + " active");
      if (c.bytes !== undefined) traffic.push(bytes(c.bytes));
      if (c.bytes_from_client !== undefined) traffic.push(bytes(c.bytes_from_client + (c.bytes_to_client || 0)));
      var state = svc.error ? el("span", { "class": "pill pill-down", text: svc.error })
        : (svc.fail_open ? el("span", { "class": "pill pill-down", text: "fail-open" })
          : (svc.listening === false || svc.installed === false ? el("span", { "class": "pill pill-warn", text: "not installed" })
            : el("span", { "class": "pill pill-up", text: "serving" })));
      rows.push(el("tr", { "data-service": svc.name }, [
        el("td", null, [el("strong", { text: svc.name })]),
        el("td", { "class": "mono", text: svc.proto + " " + svc.vip }),
        el("td", { text: svc.upstream }),
        el("td", null, [state]),
        el("td", { "class": "num", text: traffic.join(" · ") }),
        el("td", null, [el("div", { "class": "chips" }, (svc.servers || []).map(function (s) {
          var sc = s.counters || {};
          var parts = [];
          if (sc.packets !== undefined) parts.push(count(sc.packets) + " pkts");
          if (sc.new_flows !== undefined) parts.push(count(sc.new_flows) + " flows");
          if (sc.bytes !== undefined) parts.push(bytes(sc.bytes));
          return el("span", { "class": "chip " + (s.status === "down" ? "bad" : ""), title: STATUS_LABEL[s.status] || s.status },
            [el("span", { "class": "sw s-" + s.status }), " " + s.address + (parts.length ? " · " + parts.join(" · ") : "")]);
        }))])
      ]));
    });
    replace($("l4"), [el("table", null, [
      el("thead", null, [el("tr", null, [el("th", { text: "Service" }), el("th", { text: "VIP" }), el("th", { text: "Upstream" }),
        el("th", { text: "State" }), el("th", { "class": "num", text: "Traffic" }), el("th", { text: "Servers" })])]),
      el("tbody", null, rows)
    ])]);
  }

  function renderHeader(doc) {
    $("elb-name").textContent = doc.elb.name;
    $("version").textContent = "v" + doc.elb.version;
    $("uptime").textContent = "up " + duration(doc.elb.uptime_seconds);
    var store = $("store");
    store.hidden = false;
    store.textContent = doc.store.kind + (doc.store.connected ? " connected" : " disconnected");
    store.title = doc.store.location + (doc.store.error ? " — " + doc.store.error : "");
    store.className = "pill " + (doc.store.connected ? "pill-up" : "pill-down");
    document.title = (doc.summary.servers.down > 0 || doc.summary.upstreams_fail_open.length > 0 ? "⚠ " : "") + "elb " + doc.elb.name + " status";
  }

  function renderLegend() {
    replace($("legend"), ["up", "down", "starting", "draining", "unchecked", "out"].map(function (st) {
      return el("span", null, [el("span", { "class": "sw s-" + st }), STATUS_LABEL[st]]);
    }));
  }

  function render(doc) {
    var t = Date.now();
    var computed = rates(doc, t);
    renderHeader(doc);
    renderProblems(doc);
    renderSummary(doc, computed);
    renderUpstreams(doc, computed);
    renderDomains(doc);
    renderListeners(doc);
    renderL4(doc);
    previous = computed.sample;
    lastOk = new Date(t);
    var main = $("main");
    main.setAttribute("data-loaded", "1");
    main.setAttribute("data-stale", "0");
    $("banner").hidden = true;
    $("refresh").className = "refresh live";
    $("refresh-text").textContent = "live · " + lastOk.toLocaleTimeString();
  }

  function showAuth(message) {
    $("auth").hidden = false;
    $("auth-error").textContent = message || "";
    $("main").setAttribute("data-auth", "required");
    Array.prototype.forEach.call(document.querySelectorAll("#main > :not(#auth)"), function (n) { n.hidden = true; });
    $("refresh").className = "refresh stale";
    $("refresh-text").textContent = "token required";
  }

  function hideAuth() {
    if ($("auth").hidden) return;
    $("auth").hidden = true;
    $("main").removeAttribute("data-auth");
    Array.prototype.forEach.call(document.querySelectorAll("#main > :not(#auth):not(#banner):not(#problems)"), function (n) { n.hidden = false; });
  }

  function stale(message) {
    $("main").setAttribute("data-stale", "1");
    var banner = $("banner");
    banner.hidden = false;
    banner.textContent = message + (lastOk ? " — showing the data of " + lastOk.toLocaleTimeString() : "");
    $("refresh").className = "refresh stale";
    $("refresh-text").textContent = "not updating";
  }

  function schedule() {
    clearTimeout(timer);
    timer = setTimeout(refresh, INTERVAL_MS);
  }

  function refresh() {
    var headers = { "Accept": "application/json" };
    var t = token();
    if (t) headers["Authorization"] = "Bearer " + t;
    fetch(ENDPOINT, { headers: headers, cache: "no-store", credentials: "omit" })
      .then(function (response) {
        if (response.status === 401) {
          var had = !!t;
          sessionStorage.removeItem(TOKEN_KEY);
          showAuth(had ? "That token was refused." : "");
          return null;
        }
        if (response.status === 403) {
          stale("This address may not use the admin API (see --admin-allow)");
          schedule();
          return null;
        }
        if (!response.ok) {
          stale("elb answered " + response.status);
          schedule();
          return null;
        }
        return response.json().then(function (doc) {
          hideAuth();
          try {
            render(doc);
          } catch (bug) {
            // A fault of this page, not of the network: make it loud.
            document.documentElement.setAttribute("data-js-error", String(bug));
            console.error("status page: cannot draw the status:", bug);
          }
          schedule();
        });
      })
      .catch(function (error) {
        stale("Cannot reach elb (" + (error && error.message ? error.message : "network error") + ")");
        schedule();
      });
  }

  $("auth-form").addEventListener("submit", function (event) {
    event.preventDefault();
    var value = $("auth-token").value.trim();
    if (!value) return;
    sessionStorage.setItem(TOKEN_KEY, value);
    $("auth-token").value = "";
    refresh();
  });
  $("interval").textContent = (INTERVAL_MS / 1000) + " s";
  renderLegend();
  refresh();
})();
