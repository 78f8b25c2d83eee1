// The lineage page: plain JavaScript over the GraphQL API at /graphql (no build step).
// Cytoscape.js draws the graph; everything shown comes from graph/search/node/feature/table.
(function () {
  "use strict";

  var COLORS = {
    feature: "#2680c2", view: "#8719e0", table: "#de911d", service: "#3ebd93",
    server: "#627d98", run: "#e12d39", data_version: "#f7c948"
  };
  var SHAPES = {
    feature: "ellipse", view: "round-rectangle", table: "barrel", service: "hexagon",
    server: "rectangle", run: "diamond", data_version: "tag"
  };
  var state = { root: null, direction: "BOTH", depth: 2, asOf: null, seq: 0, panelSeq: 0 };
  var $ = function (id) { return document.getElementById(id); };

  var cy = cytoscape({
    container: $("graph"),
    wheelSensitivity: 0.3,
    style: [
      { selector: "node", style: {
        "label": "data(label)", "font-size": 11, "text-valign": "bottom", "text-margin-y": 4,
        "background-color": function (n) { return COLORS[n.data("kind")] || "#9fb3c8"; },
        "shape": function (n) { return SHAPES[n.data("kind")] || "ellipse"; },
        "width": 26, "height": 26, "text-wrap": "ellipsis", "text-max-width": 160 } },
      { selector: "node.root", style: { "border-width": 4, "border-color": "#102a43", "width": 34, "height": 34 } },
      { selector: "edge", style: {
        "width": 1.5, "line-color": "#bcccdc", "target-arrow-color": "#9fb3c8",
        "target-arrow-shape": "triangle", "curve-style": "bezier",
        "label": "data(kind)", "font-size": 8, "color": "#829ab1", "text-rotation": "autorotate" } }
    ]
  });

  function status(text, isError) {
    var el = $("status");
    el.textContent = text || "";
    el.className = isError ? "error" : "";
  }

  // One GraphQL request; on 401/403 it asks for the token once and sends again.
  function post(query, variables, retried) {
    var headers = { "content-type": "application/json" };
    var token = sessionStorage.getItem("featurestore-token");
    if (token) { headers.authorization = "Bearer " + token; }
    return fetch("/graphql", { method: "POST", headers: headers,
                               body: JSON.stringify({ query: query, variables: variables || {} }) })
      .then(function (res) {
        if ((res.status === 401 || res.status === 403) && !retried) {
          var entered = window.prompt("This server asks for a bearer token (admin scope):");
          if (entered) {
            sessionStorage.setItem("featurestore-token", entered.trim());
            return post(query, variables, true);
          }
        }
        return res.json().then(function (doc) {
          // a refusal before GraphQL (no or a wrong token, a body too large) is the
          // service's JSON error, not a GraphQL response: show it as it is
          if (!res.ok && !doc.errors) {
            var err = doc.error || {};
            throw new Error(res.status + " " + (err.code || res.statusText) + ": " + (err.message || ""));
          }
          return doc;
        });
      });
  }

  // The data of a GraphQL answer (its first error thrown).
  function gql(query, variables) {
    return post(query, variables, false).then(function (doc) {
      if (doc.errors && doc.errors.length) { throw new Error(doc.errors[0].message); }
      return doc.data;
    });
  }

  // -- search ------------------------------------------------------------------------

  // Every answer that arrives late is checked against a sequence number: a search's
  // against the newest search (an older text's list must not replace the newer one's),
  // a graph's and its panel's, failures included, against the newest draw.
  var searchTimer = null;
  var searchSeq = 0;
  function runSearch() {
    var text = $("search").value.trim();
    var list = $("results");
    var mine = ++searchSeq;
    if (!text) { list.hidden = true; return; }
    gql("query ($t: String!) { search(text: $t, limit: 15) { id kind label } }", { t: text })
      .then(function (data) {
        if (mine !== searchSeq) { return; }  // a newer search (or a choice) owns the list
        list.innerHTML = "";
        data.search.forEach(function (n, i) {
          var li = document.createElement("li");
          li.setAttribute("role", "option");
          li.dataset.id = n.id;
          if (i === 0) { li.className = "active"; }
          var name = document.createElement("span");
          name.textContent = n.label;
          var kind = document.createElement("span");
          kind.className = "kind";
          kind.textContent = n.kind;
          li.appendChild(name);
          li.appendChild(kind);
          li.addEventListener("mousedown", function (ev) { ev.preventDefault(); choose(n.id); });
          list.appendChild(li);
        });
        list.hidden = data.search.length === 0;
        if (!data.search.length) { status("nothing matches " + JSON.stringify(text)); }
      })
      .catch(function (e) { if (mine === searchSeq) { status(e.message, true); } });
  }

  function choose(id) {
    ++searchSeq;  // a search still on its way must not open the list again
    $("results").hidden = true;
    select(id);
  }

  $("search").addEventListener("input", function () {
    clearTimeout(searchTimer);
    searchTimer = setTimeout(runSearch, 150);
  });
  $("search").addEventListener("keydown", function (ev) {
    var items = Array.prototype.slice.call($("results").querySelectorAll("li"));
    var at = items.findIndex(function (li) { return li.classList.contains("active"); });
    if (ev.key === "ArrowDown" || ev.key === "ArrowUp") {
      ev.preventDefault();
      if (!items.length) { return; }
      if (at >= 0) { items[at].classList.remove("active"); }
      at = (at + (ev.key === "ArrowDown" ? 1 : items.length - 1)) % items.length;
      items[at].classList.add("active");
    } else if (ev.key === "Enter") {
      ev.preventDefault();
      if (at >= 0 && items.length) { choose(items[at].dataset.id); }
      else if ($("search").value.trim()) { choose($("search").value.trim()); }
    } else if (ev.key === "Escape") {
      $("results").hidden = true;
    }
  });
  $("search").addEventListener("blur", function () { $("results").hidden = true; });

  // -- the graph ---------------------------------------------------------------------

  var GRAPH = "query ($root: ID!, $dir: Direction!, $depth: Int!, $asOf: DateTime) {" +
    " graph(root: $root, direction: $dir, depth: $depth, asOf: $asOf) {" +
    " root nodes { id kind label attributes } edges { source target kind } } }";

  // Edges along which data flows source -> target; on the others it flows target -> source
  // (lineage/graph/topology.py FORWARD). Sources go left of the root, uses right of it.
  var FORWARD = { CONTAINS: true, SERVED_BY: true, PUBLISHED: true, OF: true };

  function flowPositions(g, rootId) {
    var level = {};
    level[rootId] = 0;
    var frontier = [rootId];
    while (frontier.length) {
      var next = [];
      g.edges.forEach(function (e) {
        var from = FORWARD[e.kind] ? e.source : e.target;  // upstream end
        var to = FORWARD[e.kind] ? e.target : e.source;
        // as the server walks: from the root both ways, then each side only further out
        if (frontier.indexOf(to) >= 0 && level[to] <= 0 && level[from] === undefined) {
          level[from] = level[to] - 1; next.push(from);
        }
        if (frontier.indexOf(from) >= 0 && level[from] >= 0 && level[to] === undefined) {
          level[to] = level[from] + 1; next.push(to);
        }
      });
      frontier = next;
    }
    var columns = {};
    g.nodes.forEach(function (n) {
      var l = level[n.id] === undefined ? 0 : level[n.id];
      (columns[l] = columns[l] || []).push(n);
    });
    var positions = {};
    Object.keys(columns).forEach(function (l) {
      var col = columns[l].sort(function (a, b) { return a.kind < b.kind ? -1 : a.kind > b.kind ? 1 : a.label < b.label ? -1 : 1; });
      col.forEach(function (n, i) { positions[n.id] = { x: Number(l) * 300, y: (i - (col.length - 1) / 2) * 64 }; });
    });
    return positions;
  }

  function select(id) {
    state.root = id;
    draw();
  }

  function draw() {
    if (!state.root) { return Promise.resolve(); }
    var seq = ++state.seq;
    status("loading " + state.root + " ...");
    return gql(GRAPH, { root: state.root, dir: state.direction, depth: state.depth, asOf: state.asOf })
      .then(function (data) {
        if (seq !== state.seq) { return; }  // a newer request is on its way
        if (!data.graph) {
          status("no node " + JSON.stringify(state.root) + (state.asOf ? " as of " + state.asOf : ""), true);
          return;
        }
        var g = data.graph;
        // the node the server drew around: a bare name may be a view and a service both,
        // and the first node of that label (service: sorts first) was not the server's root
        var root = g.nodes.find(function (n) { return n.id === g.root; });
        if (root) { state.root = root.id; }
        cy.elements().remove();
        cy.add(g.nodes.map(function (n) {
          return { group: "nodes", data: { id: n.id, label: n.label, kind: n.kind, attributes: n.attributes },
                   classes: root && n.id === root.id ? "root" : "" };
        }));
        cy.add(g.edges.map(function (e) {
          return { group: "edges", data: { id: e.source + " " + e.kind + " " + e.target,
                                           source: e.source, target: e.target, kind: e.kind } };
        }));
        cy.layout({ name: "preset", positions: flowPositions(g, root ? root.id : g.nodes[0].id),
                    padding: 40, animate: false }).run();
        status(g.nodes.length + " nodes, " + g.edges.length + " edges around " + state.root +
               " (" + state.direction.toLowerCase() + ", depth " + state.depth +
               (state.asOf ? ", as of " + state.asOf : "") + ")");
        if (root) { return showPanel(root); }
      })
      .catch(function (e) {  // the graph's or the panel's: of this draw only if still the newest
        if (seq === state.seq) { status(e.message, true); }
      });
  }

  cy.on("tap", "node", function (ev) { select(ev.target.id()); });

  $("direction").addEventListener("change", function () { state.direction = this.value; draw(); });
  $("depth").addEventListener("change", function () { state.depth = parseInt(this.value, 10); draw(); });
  $("asof").addEventListener("change", function () {
    var v = this.value;  // "YYYY-MM-DDTHH:MM[:SS]", read as UTC
    if (v.length === 16) { v += ":00"; }
    state.asOf = v ? v + "Z" : null;
    draw();
  });
  $("now").addEventListener("click", function () { $("asof").value = ""; state.asOf = null; draw(); });

  // -- the side panel ----------------------------------------------------------------

  function el(tag, text, cls) {
    var e = document.createElement(tag);
    if (text !== undefined && text !== null) { e.textContent = String(text); }
    if (cls) { e.className = cls; }
    return e;
  }

  function facts(pairs) {
    var dl = el("dl");
    pairs.forEach(function (p) {
      if (p[1] === undefined || p[1] === null || p[1] === "") { return; }
      dl.appendChild(el("dt", p[0]));
      dl.appendChild(el("dd", Array.isArray(p[1]) ? p[1].join(", ") : p[1]));
    });
    return dl;
  }

  function table(head, rows, id) {
    var t = el("table");
    if (id) { t.id = id; }
    var tr = el("tr");
    head.forEach(function (h) { tr.appendChild(el("th", h)); });
    t.appendChild(tr);
    rows.forEach(function (r) {
      var row = el("tr");
      r.forEach(function (c) { row.appendChild(el("td", c)); });
      t.appendChild(row);
    });
    return t;
  }

  function section(panel, title, content) {
    panel.appendChild(el("h3", title));
    panel.appendChild(content);
  }

  var CHANGES = "changes(limit: 5) { at kind dataVersion job runId rows }";

  function changesTable(changes) {
    if (!changes.length) { return el("p", "no job runs recorded", "none"); }
    return table(["at", "kind", "data version", "job", "rows"], changes.map(function (c) {
      return [c.at.slice(0, 19).replace("T", " "), c.kind, c.dataVersion || "", c.job, c.rows];
    }));
  }

  // The latest data version of a view and the run that published it: the view's upstream.
  function latestDataVersion(view) {
    return gql(GRAPH, { root: "view:" + view, dir: "UPSTREAM", depth: 2, asOf: state.asOf }).then(function (data) {
      if (!data.graph) { return el("p", "none recorded", "none"); }
      var versions = data.graph.nodes.filter(function (n) { return n.kind === "data_version"; });
      if (!versions.length) { return el("p", "none recorded (a memory store loads its source itself)", "none"); }
      versions.sort(function (a, b) { return b.attributes.version - a.attributes.version; });
      var dv = versions[0];
      var edge = data.graph.edges.find(function (e) { return e.kind === "PUBLISHED" && e.target === dv.id; });
      var run = edge && data.graph.nodes.find(function (n) { return n.id === edge.source; });
      var a = dv.attributes;
      var pairs = [["version", a.version], ["rows", a.rows], ["published", a.publishedAt], ["source", a.fingerprint]];
      if (run) {
        var r = run.attributes;
        pairs.push(["run", r.job + " (" + r.state + ")"], ["run id", r.runId], ["started", r.startedAt],
                   ["ended", r.endedAt], ["rows read / written", r.rowsRead + " / " + r.rowsWritten]);
      }
      return facts(pairs);
    });
  }

  // Drift status: `feature.drift` (the feature-quality records) where the server has it; a
  // server without that field answers a GraphQL error, and the section says so.
  // window.lineageDrift(featureId, gql, el), when defined, replaces this (docs/lineage.md).
  var DRIFT = "query ($id: String!) { feature(id: $id) { drift(limit: 1000) {" +
    " at test statistic pValue reference server } } }";

  function driftSection(featureId) {
    if (typeof window.lineageDrift === "function") { return window.lineageDrift(featureId, gql, el); }
    return gql(DRIFT, { id: featureId }).then(function (data) {
      var records = (data.feature && data.feature.drift) || [];
      if (!records.length) { return el("p", "no drift detected", "none"); }
      var recent = records.slice(-5).reverse();
      var box = el("div");
      box.appendChild(el("p", records.length + " drifting window" + (records.length > 1 ? "s" : "") +
                               ", latest " + recent[0].at.slice(0, 19).replace("T", " ")));
      box.appendChild(table(["at", "test", "p-value", "reference", "server"], recent.map(function (r) {
        return [r.at.slice(0, 19).replace("T", " "), r.test, r.pValue.toExponential(2), "v" + r.reference, r.server];
      }), "drift"));
      return box;
    }).catch(function () { return el("p", "no drift records on this server", "none"); });
  }

  // The panel's sections come from requests that answer one after another: each is added
  // only while the panel still shows this node (a node selected meanwhile owns it).
  function showPanel(node) {
    var mine = ++state.panelSeq;
    var panel = $("panel");
    var add = function (title, content) {
      if (mine !== state.panelSeq) { return false; }
      section(panel, title, content);
      return true;
    };
    panel.innerHTML = "";
    panel.dataset.node = node.id;
    panel.appendChild(el("h2", node.label));
    panel.appendChild(el("div", node.kind.replace("_", " "), "kind"));
    var a = node.attributes || {};
    panel.appendChild(facts([["owner", a.owner], ["description", a.description], ["view", a.view],
                             ["dtype", a.dtype], ["version", a.version], ["versions", a.versions],
                             ["state", a.state], ["job", a.job], ["rows", a.rows],
                             ["published", a.publishedAt], ["fingerprint", a.fingerprint],
                             ["started", a.startedAt], ["ended", a.endedAt], ["error", a.error]]));
    if (node.kind === "feature") { return featurePanel(node, add); }
    if (node.kind === "table") {
      return gql("query ($n: String!) { table(name: $n) { " + CHANGES + " } }", { n: node.label })
        .then(function (data) { add("Changes", changesTable(data.table ? data.table.changes : [])); });
    }
    if (node.kind === "view") {
      return latestDataVersion(node.label).then(function (c) { add("Latest data version", c); });
    }
    return Promise.resolve();
  }

  function featurePanel(node, add) {
    var q = "query ($id: String!) { feature(id: $id) { servedBy { server count lastSeen } " + CHANGES + " } }";
    return gql(q, { id: node.label }).then(function (data) {
      var f = data.feature || { servedBy: [], changes: [] };
      var served = f.servedBy.length
        ? table(["server", "served", "last seen"], f.servedBy.map(function (s) {
            return [s.server, s.count.toLocaleString("en"), s.lastSeen.slice(0, 19).replace("T", " ")];
          }), "served")
        : el("p", "not served yet", "none");
      if (!add("Served", served)) { return; }  // no more requests for a panel gone
      return latestDataVersion(node.attributes.view).then(function (dv) {
        if (!add("Latest data version", dv)) { return; }
        add("Changes upstream", changesTable(f.changes));
        return driftSection(node.label).then(function (d) { add("Drift", d); });
      });
    });
  }

  window.lineage = { cy: cy, state: state, select: select, draw: draw };
  var initial = new URLSearchParams(window.location.search).get("root");
  if (initial) { select(initial); }
})();
