/* gpudispatch report: draws the data in #gd-data (a file) or fetched from serve (live).
   Plain DOM and hand-drawn SVG; nothing is fetched from the network. Every text from
   the queue folder goes through esc() (names may hold any character). */
(function () {
  "use strict";
  var COLOR = {completed: "#2e9e4f", failed: "#d64545", running: "#2f7ed8",
               cancelled: "#9a9a9a", earlier: "#c8b27a", queued: "#8a6fd1"};
  var STATES = ["queued", "running", "completed", "failed"];
  var JOBS_SHOWN = 500;
  var live = JSON.parse(document.getElementById("gd-live").textContent);
  var data = JSON.parse(document.getElementById("gd-data").textContent);
  var app = document.getElementById("app");
  var tip = document.createElement("div");
  tip.id = "tip";
  document.body.appendChild(tip);
  var filterText = "";
  var logJob = null;
  var token = live ? (new URLSearchParams(location.search).get("token") || "") : "";

  function esc(s) {
    return String(s == null ? "" : s).replace(/[&<>"']/g, function (c) {
      return {"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;"}[c];
    });
  }
  function pad(n) { return (n < 10 ? "0" : "") + n; }
  function clock(t, withDate, frac) {
    if (t == null) return "";
    var tenths = Math.round(t * 10);
    var d = new Date(frac ? tenths * 100 : t * 1000);
    var hms = pad(d.getHours()) + ":" + pad(d.getMinutes()) + ":" + pad(d.getSeconds());
    if (frac) hms += "." + (tenths % 10);
    return withDate ? d.getFullYear() + "-" + pad(d.getMonth() + 1) + "-" + pad(d.getDate()) + " " + hms : hms;
  }
  function dur(s) {
    if (s == null || !isFinite(s)) return "";
    if (s < 10) return Math.max(0, s).toFixed(1) + "s";
    s = Math.round(s);
    var h = Math.floor(s / 3600), m = Math.floor((s % 3600) / 60), sec = s % 60;
    return h ? h + ":" + pad(m) + ":" + pad(sec) : m + ":" + pad(sec);
  }
  function fmt(v) {
    if (v == null) return "";
    if (typeof v === "number") return Number.isInteger(v) ? String(v) : String(+v.toPrecision(6));
    return String(v);
  }
  function tick(v) {  // an axis label: 4 significant digits
    return typeof v === "number" && !Number.isInteger(v) ? String(+v.toPrecision(4)) : fmt(v);
  }
  function badge(s) { return '<span class="st ' + esc(s) + '">' + esc(s) + "</span>"; }
  function gpus(j) { return j.g && j.g.length ? j.g.join(",") : (j.t0 != null ? "cpu" : ""); }

  // ------------------------------------------------------------------ page skeleton
  function skeleton() {
    app.innerHTML =
      '<header><h1>gpudispatch</h1><span id="root" class="mute"></span>' +
      '<span id="stamp" class="mute small"></span><span id="ctl"></span></header>' +
      '<div id="banner"></div><div class="cards" id="cards"></div>' +
      '<h2>Timeline <span class="mute small">one lane per GPU and CPU slot; hover a bar; drag to zoom, double-click to see all</span></h2>' +
      '<div class="legend" id="legend"></div><div class="panel" id="tl-wrap"></div>' +
      '<h2>Now</h2><div class="cols"><div class="panel" id="running"></div>' +
      '<div class="panel" id="waiting"></div></div>' +
      '<div id="logpanel"></div>' +
      '<h2>Failures</h2><div class="panel" id="failures"></div>' +
      '<div id="sweeps"></div>' +
      '<h2>All jobs</h2><p><input type="search" id="filter" placeholder="filter by name, state or reason"> ' +
      '<span id="jobcount" class="mute small"></span></p><div class="panel" id="jobs"></div>';
    var legend = ["completed", "failed", "cancelled", "running", "earlier"].map(function (k) {
      return '<span><i style="background:' + COLOR[k] + '"></i>' +
        (k === "earlier" ? "earlier run of a name dropped again" : k) + "</span>";
    }).join("") + '<span><i style="background:#fff;border:1.5px dashed #000"></i>retried (attempts &gt; 1)</span>' +
      '<span><b style="color:#111">\u25b8</b> handed over (started the moment the run before it on its slot ended)</span>';
    document.getElementById("legend").innerHTML = legend;
    document.getElementById("filter").addEventListener("input", function (e) {
      filterText = e.target.value.toLowerCase();
      drawJobs();
    });
    app.addEventListener("click", onClick);
    var wrap = document.getElementById("tl-wrap");
    wrap.addEventListener("mousemove", onHover);
    wrap.addEventListener("mouseleave", function () { tip.style.display = "none"; });
    wrap.addEventListener("mousedown", function (e) { dragFrom = e.clientX; e.preventDefault(); });
    wrap.addEventListener("mouseup", function (e) {
      var svg = document.getElementById("timeline");
      if (dragFrom == null || !geom || !svg) return;
      var a = Math.min(dragFrom, e.clientX), b = Math.max(dragFrom, e.clientX);
      dragFrom = null;
      if (b - a < 6) return;
      var x0 = svg.getBoundingClientRect().left + geom.left;
      zoom = [geom.t0 + (a - x0) / geom.scale, geom.t0 + (b - x0) / geom.scale];
      if (zoom[0] < geom.t0) zoom[0] = geom.t0;
      drawTimeline();
    });
    wrap.addEventListener("dblclick", function () { zoom = null; drawTimeline(); });
  }

  // ------------------------------------------------------------------ sections
  function drawHeader() {
    document.getElementById("root").textContent = data.root;
    var stamp = (live ? "live · " : "report of ") + clock(data.now, true);
    document.getElementById("stamp").innerHTML =
      (live ? '<span class="live-dot" id="dot"></span>' : "") + esc(stamp);
    document.getElementById("banner").innerHTML = data.paused
      ? '<div class="banner">PAUSED: running jobs go on; no new job starts until resumed</div>' : "";
    document.getElementById("cards").innerHTML = STATES.map(function (s) {
      return '<div class="card ' + s + '"><b>' + (data.counts[s] || 0) + "</b>" + s + "</div>";
    }).join("");
    var ctl = "";
    if (live && live.actions) {
      ctl = data.paused ? '<button data-act="resume">resume queue</button>'
                        : '<button data-act="pause">pause queue</button>';
    }
    document.getElementById("ctl").innerHTML = ctl;
  }

  function niceStep(span, ticks) {
    var steps = [0.1, 0.2, 0.5, 1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 10800,
                 21600, 43200, 86400, 172800, 604800];
    for (var i = 0; i < steps.length; i++) if (span / steps[i] <= ticks) return steps[i];
    return steps[steps.length - 1] * Math.ceil(span / ticks / steps[steps.length - 1]);
  }

  var geom = null, zoom = null, dragFrom = null;
  function drawTimeline() {
    var wrap = document.getElementById("tl-wrap");
    var bars = data.bars, lanes = data.lanes;
    if (!bars.length) {
      wrap.innerHTML = '<p class="mute">No run has started yet.</p>';
      geom = null;
      return;
    }
    var t0 = Infinity, t1 = -Infinity, i;
    for (i = 0; i < bars.length; i++) {
      if (bars[i][2] < t0) t0 = bars[i][2];
      if (bars[i][3] > t1) t1 = bars[i][3];
    }
    if (t1 - t0 < 1) t1 = t0 + 1;
    if (zoom) { t0 = zoom[0]; t1 = zoom[1]; }
    var left = 86, right = 14, laneH = 20, gap = 4, top = 22;
    var width = Math.max(640, wrap.clientWidth - 26);
    var plotW = width - left - right;
    var height = top + lanes.length * (laneH + gap) + 4;
    var scale = plotW / (t1 - t0);
    var out = ['<svg id="timeline" xmlns="http://www.w3.org/2000/svg" width="' + width +
               '" height="' + height + '" role="img" aria-label="timeline of runs per GPU">'];
    var span = t1 - t0, step = niceStep(span, Math.max(2, Math.floor(plotW / 90)));
    var withDate = span > 86400;
    for (i = 0; i < lanes.length; i++) {
      var y = top + i * (laneH + gap);
      out.push('<rect x="' + left + '" y="' + y + '" width="' + plotW + '" height="' + laneH +
               '" fill="' + (i % 2 ? "#fbfcfd" : "#f3f6f9") + '"/><text class="lane-label" x="' +
               (left - 8) + '" y="' + (y + laneH / 2 + 4) + '" text-anchor="end">' +
               esc(lanes[i]) + "</text>");
    }
    out.push('<g class="axis">');
    for (var t = Math.ceil(t0 / step) * step; t <= t1; t += step) {
      var x = left + (t - t0) * scale;
      out.push('<line x1="' + x.toFixed(1) + '" x2="' + x.toFixed(1) + '" y1="' + (top - 4) +
               '" y2="' + height + '" stroke="#c5ced8" stroke-opacity="0.6"/><text x="' + x.toFixed(1) +
               '" y="12" text-anchor="middle">' + esc(clock(t, withDate, step < 1)) + "</text>");
    }
    out.push("</g>");
    for (i = 0; i < bars.length; i++) {
      var b = bars[i], job = data.jobs[b[0]];
      if (b[3] < t0 || b[2] > t1) continue;
      var bx = left + (Math.max(b[2], t0) - t0) * scale;
      var bw = Math.max(3, (Math.min(b[3], t1) - Math.max(b[2], t0)) * scale);
      var by = top + b[1] * (laneH + gap) + 1;
      var kind = b[4];
      var retried = job.a > 1 && kind !== "earlier";
      out.push('<rect class="bar" data-b="' + i + '" x="' + bx.toFixed(1) + '" y="' + by +
               '" width="' + bw.toFixed(1) + '" height="' + (laneH - 2) + '" rx="2" fill="' +
               (COLOR[kind] || "#999") + '"' +
               (retried ? ' stroke="#111" stroke-dasharray="3,2" stroke-width="1.2"' : "") + "/>");
      if (job.ho && kind !== "earlier") {  // a hand-over: a notch at the bar's start
        out.push('<path class="handover" d="M' + bx.toFixed(1) + "," + by + "l5," +
                 ((laneH - 2) / 2) + "l-5," + ((laneH - 2) / 2) + 'z" fill="#111" ' +
                 'style="pointer-events:none"/>');
      }
      if (bw > 46) {
        var label = (retried ? "\u21bb" + job.a + " " : "") + job.n;
        var fit = Math.floor((bw - 6) / 6.2);
        if (label.length > fit) label = label.slice(0, Math.max(1, fit - 1)) + "\u2026";
        out.push('<text x="' + (bx + 4).toFixed(1) + '" y="' + (by + laneH / 2 + 3) +
                 '" fill="#fff" style="fill:#fff;pointer-events:none">' + esc(label) + "</text>");
      }
    }
    if (live) {
      var nx = left + (data.now - t0) * scale;
      if (nx >= left && nx <= left + plotW + 1) {
        out.push('<line x1="' + nx.toFixed(1) + '" x2="' + nx.toFixed(1) + '" y1="' + (top - 4) +
                 '" y2="' + height + '" stroke="#d64545" stroke-dasharray="4,3"/>');
      }
    }
    out.push("</svg>");
    wrap.innerHTML = out.join("");
    geom = {t0: t0, t1: t1, scale: scale, left: left};
  }

  function onHover(e) {
    var i = e.target && e.target.getAttribute && e.target.getAttribute("data-b");
    if (i == null) { tip.style.display = "none"; return; }
    var b = data.bars[+i], j = data.jobs[b[0]];
    var lines = [j.n, (b[4] === "earlier" ? "earlier run" : j.s) + " on " + data.lanes[b[1]],
                 clock(b[2], true) + " \u2192 " + (b[4] === "running" ? "now" : clock(b[3], true)) +
                 "  (" + dur(b[3] - b[2]) + ")",
                 "attempts: " + j.a + (j.x != null ? "   exit code: " + j.x : "") +
                 (j.h ? "   host: " + j.h : "")];
    if (j.ho && b[4] !== "earlier") lines.push("handed over: started the moment the run before it on this slot ended");
    if (j.r) lines.push("reason: " + j.r);
    tip.textContent = lines.join("\n");
    tip.style.display = "block";
    var x = Math.min(e.clientX + 14, window.innerWidth - tip.offsetWidth - 8);
    tip.style.left = x + "px";
    tip.style.top = (e.clientY + 16) + "px";
  }

  function drawNow() {
    var running = [], i, j;
    for (i = 0; i < data.jobs.length; i++) if (data.jobs[i].s === "running") running.push(data.jobs[i]);
    var h = "<h3>Running (" + running.length + ")</h3>";
    if (!running.length) h += '<p class="mute">Nothing runs.</p>';
    else {
      h += "<table><tr><th>name</th><th>gpus</th><th>since</th><th>for</th><th>attempt</th>" +
        (live ? "<th></th>" : "") + "</tr>";
      running.forEach(function (j) {
        h += '<tr><td class="name">' + esc(j.n) + "</td><td>" + esc(gpus(j)) + "</td><td>" +
          esc(clock(j.t0)) + '</td><td class="num">' + esc(dur(data.now - j.t0)) +
          '</td><td class="num">' + esc(j.a) + "</td>" +
          (live ? '<td><button data-log="' + esc(j.n) + '">log</button>' +
            (live.actions ? ' <button data-act="cancel" data-name="' + esc(j.n) + '">cancel</button>' : "") +
            "</td>" : "") + "</tr>";
      });
      h += "</table>";
    }
    if (data.gpus && data.gpus.length) {
      h += "<h3>GPUs</h3><table><tr><th>gpu</th><th>memory</th><th>util</th><th>busy</th></tr>";
      data.gpus.forEach(function (g) {
        h += "<tr><td>" + esc(g.index + " " + (g.name || "")) + '</td><td class="num">' +
          esc(g.used != null ? (g.used / 2 ** 30).toFixed(1) + " / " + (g.total / 2 ** 30).toFixed(1) + " GiB" : "") +
          '</td><td class="num">' + esc(g.util != null ? g.util + "%" : "") + "</td><td>" +
          esc(g.blocked || "") + "</td></tr>";
      });
      h += "</table>";
    }
    document.getElementById("running").innerHTML = h;
    var w = "<h3>Waiting (" + (data.counts.queued || 0) + ")</h3>";
    if (data.paused) w += '<p><b>The queue is paused.</b></p>';
    if (data.blocked.length) w += "<p>Busy with foreign processes: " + esc(data.blocked.join("; ")) + "</p>";
    if (!data.waiting.length) w += '<p class="mute">Nothing waits.</p>';
    else {
      w += "<table><tr><th>name</th><th>why it waits</th>" + (live && live.actions ? "<th></th>" : "") + "</tr>";
      data.waiting.forEach(function (p) {
        w += '<tr><td class="name">' + esc(p[0]) + "</td><td>" + esc(p[1]) + "</td>" +
          (live && live.actions ? '<td><button data-act="cancel" data-name="' + esc(p[0]) + '">cancel</button></td>' : "") +
          "</tr>";
      });
      w += "</table>";
      if (data.counts.queued > data.waiting.length)
        w += '<p class="mute small">the next ' + data.waiting.length + " of " + data.counts.queued + " shown</p>";
    }
    document.getElementById("waiting").innerHTML = w;
  }

  function drawFailures() {
    var failed = data.jobs.filter(function (j) { return j.s === "failed" || j.s === "cancelled"; });
    failed.sort(function (a, b) { return (b.t1 || 0) - (a.t1 || 0); });
    var el = document.getElementById("failures");
    if (!failed.length) { el.innerHTML = '<p class="mute">No failures.</p>'; return; }
    var by = {}, order = [];
    failed.forEach(function (j) {
      var r = j.r || "(no reason)";
      if (!(r in by)) { by[r] = 0; order.push(r); }
      by[r]++;
    });
    order.sort(function (a, b) { return by[b] - by[a]; });
    var h = "<p><b>" + failed.length + " failed</b>" + (order.length > 1 ? ", by reason:" : "") + "</p>";
    if (order.length > 1) {
      h += "<table style=\"width:auto;margin-bottom:10px\">" + order.slice(0, 8).map(function (r) {
        return '<tr><td class="num">' + by[r] + "</td><td>" + esc(r) + "</td></tr>";
      }).join("") + (order.length > 8 ? '<tr><td></td><td class="mute">and ' + (order.length - 8) + " other reasons</td></tr>" : "") + "</table>";
    }
    h += "<table><tr><th>name</th><th>ended</th><th>attempts</th><th>reason, and the last lines of its log</th>" +
      (live && live.actions ? "<th></th>" : "") + "</tr>";
    failed.slice(0, 50).forEach(function (j) {
      h += '<tr><td class="name">' + esc(j.n) + " " + badge(j.s) + "</td><td>" + esc(clock(j.t1, true)) +
        '</td><td class="num">' + esc(j.a) + "</td><td><b>" + esc(j.r || "") + "</b>" +
        (j.tail ? "<pre>" + esc(j.tail) + "</pre>" : "") + "</td>" +
        (live && live.actions ? '<td><button data-act="retry" data-name="' + esc(j.n) + '">retry</button></td>' : "") +
        "</tr>";
    });
    h += "</table>";
    if (failed.length > 50) h += '<p class="mute small">the newest 50 of ' + failed.length + " shown</p>";
    el.innerHTML = h;
  }

  // ------------------------------------------------------------------ sweeps
  function axisOf(values) {
    var nums = values.filter(function (v) { return typeof v === "number" && isFinite(v); });
    if (nums.length && nums.length === values.filter(function (v) { return v != null; }).length) {
      var lo = Math.min.apply(null, nums), hi = Math.max.apply(null, nums);
      var log = lo > 0 && hi / lo >= 100;
      var f = log ? Math.log10 : function (v) { return v; };
      var a = f(lo), b = f(hi);
      if (a === b) { a -= 1; b += 1; }
      return {pos: function (v) { return typeof v === "number" ? (f(v) - a) / (b - a) : null; },
              ticks: [lo, hi], log: log};
    }
    var cats = [];
    values.forEach(function (v) { if (v != null && cats.indexOf(String(v)) < 0) cats.push(String(v)); });
    cats.sort();
    return {pos: function (v) {
      if (v == null) return null;
      var k = cats.indexOf(String(v));
      return cats.length === 1 ? 0.5 : k / (cats.length - 1);
    }, ticks: cats, cat: true};
  }

  function metricColor(t) {  // 0 = best (green) .. 1 = worst (orange-red)
    var h = 140 - 130 * t;
    return "hsl(" + h.toFixed(0) + ",70%,45%)";
  }

  function drawSweep(sw) {
    var cols = sw.columns, rows = sw.rows, mi = sw.metric ? cols.indexOf(sw.metric) : -1;
    var h = "<h3>sweep " + esc(sw.name) + ' <span class="mute small">' + rows.length + " runs" +
      (sw.metric ? "; metric " + esc(sw.metric) + " (" + esc(sw.goal) + ")" : "; no metric reported yet") +
      "</span></h3>";
    if (mi < 0) return h;
    var mvals = rows.map(function (r) { return r[mi]; });
    var max = sw.goal === "maximize";
    var nums = mvals.filter(function (v) { return typeof v === "number" && isFinite(v); });
    var lo = Math.min.apply(null, nums), hi = Math.max.apply(null, nums);
    function badness(v) {
      if (typeof v !== "number" || hi === lo) return 0.5;
      var t = (v - lo) / (hi - lo);
      return max ? 1 - t : t;
    }
    var best = {};
    sw.best.forEach(function (n) { best[n] = true; });
    // best runs
    h += '<div class="cols"><div class="panel"><b>best runs</b><table><tr><th>#</th>' +
      cols.map(function (c) { return "<th>" + esc(c) + "</th>"; }).join("") + "</tr>";
    sw.best.forEach(function (name, k) {
      var r = rows.find(function (r) { return r[0] === name; });
      if (!r) return;
      h += '<tr class="' + (k === 0 ? "best" : "") + '"><td class="num">' + (k + 1) + "</td>" +
        r.map(function (v, c) {
          return '<td class="' + (c === 0 ? "name" : typeof v === "number" ? "num" : "") + '">' +
            (c === 1 ? badge(v) : esc(fmt(v))) + "</td>";
        }).join("") + "</tr>";
    });
    h += "</table></div>";
    // parallel coordinates
    var axes = sw.params.map(function (p) { return cols.indexOf(p); }).concat([mi]);
    var W = 560, H = 240, L = 34, R = 50, T = 34, B = 20;
    var ax = axes.map(function (c) { return axisOf(rows.map(function (r) { return r[c]; })); });
    var step = axes.length > 1 ? (W - L - R) / (axes.length - 1) : 0;
    var p = ['<div class="panel"><b>parallel coordinates</b> <span class="mute small">one line per run, green = best</span><br>' +
             '<svg class="pc" width="' + W + '" height="' + H + '" xmlns="http://www.w3.org/2000/svg">'];
    var drawn = rows.length > 3000 ? rows.slice(0, 3000) : rows;
    drawn.forEach(function (r) {
      var pts = [];
      for (var k = 0; k < axes.length; k++) {
        var t = ax[k].pos(r[axes[k]]);
        if (t == null) { if (k === axes.length - 1) break; else continue; }
        pts.push((L + k * step).toFixed(1) + "," + (H - B - t * (H - T - B)).toFixed(1));
      }
      var ok = typeof r[mi] === "number";
      p.push('<polyline fill="none" stroke="' + (ok ? metricColor(badness(r[mi])) : "#bbb") +
             '" stroke-opacity="' + (best[r[0]] ? 1 : 0.55) + '" stroke-width="' + (best[r[0]] ? 2.2 : 1.2) +
             '"' + (ok ? "" : ' stroke-dasharray="3,3"') + ' points="' + pts.join(" ") + '"><title>' +
             esc(r[0] + (ok ? " " + sw.metric + "=" + fmt(r[mi]) : "")) + "</title></polyline>");
    });
    axes.forEach(function (c, k) {
      var x = L + k * step, a = ax[k];
      p.push('<line x1="' + x + '" x2="' + x + '" y1="' + T + '" y2="' + (H - B) + '" stroke="#445"/>' +
             '<text x="' + x + '" y="' + (T - 20) + '" text-anchor="middle" style="font-weight:600">' +
             esc(cols[c]) + (a.log ? " (log)" : "") + "</text>");
      a.ticks.forEach(function (v) {
        var t = a.pos(a.cat ? v : v);
        p.push('<text x="' + (x + 4) + '" y="' + (H - B - t * (H - T - B) + 4).toFixed(1) + '">' + esc(tick(v)) + "</text>");
      });
    });
    p.push("</svg></div></div>");
    h += p.join("");
    // metric against each parameter
    h += '<div class="plots">';
    sw.params.forEach(function (name) {
      var c = cols.indexOf(name), a = axisOf(rows.map(function (r) { return r[c]; }));
      var my = axisOf(nums);
      var w = 250, hh = 190, l = 48, r = 10, t = 20, b = 34;
      var s = ['<div class="panel"><svg class="scatter" width="' + w + '" height="' + hh + '" xmlns="http://www.w3.org/2000/svg">' +
               '<text x="' + (w / 2) + '" y="13" text-anchor="middle" style="font-weight:600">' +
               esc(sw.metric) + " vs " + esc(name) + "</text>" +
               '<rect x="' + l + '" y="' + t + '" width="' + (w - l - r) + '" height="' + (hh - t - b) + '" fill="#f7f9fb" stroke="#e3e8ee"/>'];
      rows.forEach(function (row) {
        var x = a.pos(row[c]), y = my.pos(row[mi]);
        if (x == null || y == null) return;
        var cx = l + 6 + x * (w - l - r - 12), cy = hh - b - 4 - y * (hh - t - b - 8);
        s.push('<circle cx="' + cx.toFixed(1) + '" cy="' + cy.toFixed(1) + '" r="' + (best[row[0]] ? 5 : 3.5) +
               '" fill="' + metricColor(badness(row[mi])) + '" stroke="' + (best[row[0]] ? "#000" : "none") +
               '"><title>' + esc(row[0] + ": " + name + "=" + fmt(row[c]) + ", " + sw.metric + "=" + fmt(row[mi])) +
               "</title></circle>");
      });
      a.ticks.forEach(function (v) {
        var x = l + 6 + a.pos(v) * (w - l - r - 12);
        s.push('<text x="' + x.toFixed(1) + '" y="' + (hh - b + 14) + '" text-anchor="middle">' + esc(tick(v)) + "</text>");
      });
      [lo, hi].forEach(function (v) {
        var y = hh - b - 4 - my.pos(v) * (hh - t - b - 8);
        s.push('<text x="' + (l - 4) + '" y="' + (y + 4).toFixed(1) + '" text-anchor="end">' + esc(tick(v)) + "</text>");
      });
      s.push('<text x="' + (w / 2) + '" y="' + (hh - 4) + '" text-anchor="middle" class="mute">' + esc(name) +
             (a.log ? " (log)" : "") + "</text></svg></div>");
      h += s.join("");
    });
    h += "</div>";
    return h;
  }

  function drawSweeps() {
    var el = document.getElementById("sweeps");
    if (!data.sweeps.length) { el.innerHTML = ""; return; }
    el.innerHTML = "<h2>Sweeps</h2>" + data.sweeps.map(drawSweep).join("");
  }

  // ------------------------------------------------------------------ all jobs
  function drawJobs() {
    var shown = [], total = 0;
    for (var i = 0; i < data.jobs.length; i++) {
      var j = data.jobs[i];
      if (filterText && (j.n + " " + j.s + " " + (j.r || "")).toLowerCase().indexOf(filterText) < 0) continue;
      total++;
      if (shown.length < JOBS_SHOWN) shown.push(j);
    }
    var h = ["<table><tr><th>name</th><th>state</th><th>gpus</th><th>attempts</th><th>started</th><th>time</th><th>reason</th></tr>"];
    shown.forEach(function (j) {
      var end = j.t1 != null ? j.t1 : (j.s === "running" ? data.now : null);
      h.push('<tr><td class="name">' + esc(j.n) + "</td><td>" + badge(j.s) + "</td><td>" + esc(gpus(j)) +
             '</td><td class="num">' + esc(j.a || "") + "</td><td>" + esc(clock(j.t0, true)) +
             '</td><td class="num">' + esc(j.t0 != null && end != null ? dur(end - j.t0) : "") +
             "</td><td>" + esc(j.r || "") + "</td></tr>");
    });
    h.push("</table>");
    document.getElementById("jobs").innerHTML = h.join("");
    document.getElementById("jobcount").textContent = total > shown.length
      ? shown.length + " of " + total + " shown; type to filter" : total + " jobs";
  }

  // ------------------------------------------------------------------ live
  function drawLog() {
    var el = document.getElementById("logpanel");
    if (!logJob) { el.innerHTML = ""; return; }
    fetch("api/log?name=" + encodeURIComponent(logJob), {headers: auth()})
      .then(function (r) { return r.ok ? r.text() : Promise.resolve("(" + r.status + ")"); })
      .then(function (text) {
        el.innerHTML = '<h2>Log of <span class="name">' + esc(logJob) + '</span> <button data-log="">close</button></h2>' +
          '<pre id="logtext" style="max-height:24em">' + esc(text) + "</pre>";
        var pre = document.getElementById("logtext");
        pre.scrollTop = pre.scrollHeight;
      })
      .catch(function () {});
  }

  function auth() { return token ? {"X-Gpudispatch-Token": token} : {"X-Gpudispatch": "1"}; }

  function onClick(e) {
    var t = e.target;
    if (t.hasAttribute("data-log")) { logJob = t.getAttribute("data-log") || null; drawLog(); return; }
    var act = t.getAttribute("data-act");
    if (!act || !live) return;
    var name = t.getAttribute("data-name");
    if (act === "cancel" && !confirm("cancel " + name + "?")) return;
    fetch("api/" + act, {method: "POST", headers: Object.assign({"Content-Type": "application/json"}, auth()),
                         body: JSON.stringify({name: name})})
      .then(function (r) { return r.json(); })
      .then(function (res) { if (res.error) alert(res.error); poll(); })
      .catch(function () {});
  }

  var etag = null;
  function poll() {
    var h = auth();
    if (etag) h["If-None-Match"] = etag;
    return fetch(live.state, {headers: h, cache: "no-store"}).then(function (r) {
      var dot = document.getElementById("dot");
      if (dot) dot.className = "live-dot";
      if (r.status === 304) return;
      if (!r.ok) throw new Error(r.status);
      etag = r.headers.get("ETag");
      return r.json().then(function (d) { data = d; drawAll(); });
    }).catch(function () {
      var dot = document.getElementById("dot");
      if (dot) dot.className = "live-dot stale";
    });
  }

  function drawAll() {
    drawHeader();
    drawTimeline();
    drawNow();
    drawFailures();
    drawSweeps();
    drawJobs();
    window.GD_RENDERS = (window.GD_RENDERS || 0) + 1;
    window.GD_READY_AT = performance.now();
    window.GD_READY = true;
    document.body.setAttribute("data-ready", "1");
  }

  skeleton();
  if (data) drawAll();
  if (live) {
    poll();
    setInterval(function () { poll(); if (logJob) drawLog(); }, live.interval || 1000);
  }
  var resized = null;
  window.addEventListener("resize", function () {
    clearTimeout(resized);
    resized = setTimeout(function () { if (data) drawTimeline(); }, 150);
  });
})();
