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
  // signal (optional): an AbortSignal that cancels the request.
  function post(query, variables, retried, signal) {
    var headers = { "content-type": "application/json" };
    var token = sessionStorage.getItem("featurestore-token");
    if (token) { headers.authorization = "Bearer " + token; }
    return fetch("/graphql", { method: "POST", headers: headers, signal: signal,
                               body: JSON.stringify({ query: query, variables: variables || {} }) })
      .then(function (res) {
        if ((res.status === 401 || res.status === 403) && !retried) {
          var entered = window.prompt("This server asks for a bearer token (admin scope):");
          if (entered) {
            sessionStorage.setItem("featurestore-token", entered.trim());
            return post(query, variables, true, signal);
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
  function gql(query, variables, signal) {
    return post(query, variables, false, signal).then(function (doc) {
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
  var searchAbort = null;  // the AbortController of the search request on its way
  var listText = null;  // the text the list in #results was built for (null: none)
  function runSearch() {
    var text = $("search").value.trim();
    var list = $("results");
    cancelSearch();  // an older text's request is of no use now
    var mine = searchSeq;
    if (!text) { hideResults(); return; }
    searchAbort = new AbortController();
    gql("query ($t: String!) { search(text: $t, limit: 15) { id kind label } }", { t: text },
        searchAbort.signal)
      .then(function (data) {
        if (mine !== searchSeq) { return; }  // a newer search (or a choice) owns the list
        list.innerHTML = "";
        listText = text;
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

  // No search started before now may open the list: neither one still waiting out its
  // debounce (Enter within 150 ms of typing opened the list after the choice, review s58
  // round 2c #8) nor one on its way (aborted, and its answer dropped should it come).
  function cancelSearch() {
    clearTimeout(searchTimer);
    searchTimer = null;
    ++searchSeq;
    if (searchAbort) { searchAbort.abort(); searchAbort = null; }
  }

  function choose(id) {
    cancelSearch();
    hideResults();
    select(id);
  }

  // Hidden, the list is no one's to choose from: its items and active item go with it.
  function hideResults() {
    var list = $("results");
    list.hidden = true;
    list.innerHTML = "";
    listText = null;
  }

  // The list's items while it is shown and was built for the text in the box; else none:
  // Enter on an older text's list (its answer, or the next one's, still on the way) or on
  // a hidden one drew the node of a text no longer typed (review s58 #5).
  function currentItems() {
    var list = $("results");
    if (list.hidden || listText !== $("search").value.trim()) { return []; }
    return Array.prototype.slice.call(list.querySelectorAll("li"));
  }

  $("search").addEventListener("input", function () {
    clearTimeout(searchTimer);
    searchTimer = setTimeout(runSearch, 150);
  });
  $("search").addEventListener("keydown", function (ev) {
    var items = currentItems();
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
      cancelSearch();
      hideResults();
    }
  });
  $("search").addEventListener("blur", function () { cancelSearch(); hideResults(); });

  // -- the graph ---------------------------------------------------------------------

  var GRAPH = "query ($root: ID!, $dir: Direction!, $depth: Int!, $asOf: DateTime) {" +
    " graph(root: $root, direction: $dir, depth: $depth, asOf: $asOf) {" +
    " root nodes { id kind label attributes } edges { source target kind }" +
    " truncated { node kind direction kept dropped } } }";

  // What the walk left out (it draws 100 neighbours per node, edge kind and direction):
  // "1,400 more PRODUCED_BY of table:warehouse.wide not drawn (100 drawn)".
  function truncationNote(g) {
    return (g.truncated || []).map(function (t) {
      return t.dropped.toLocaleString("en") + " more " + t.kind + " of " + t.node +
        " not drawn (" + t.kept + " drawn)";
    }).join("; ");
  }

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
        var cut = truncationNote(g);
        status(g.nodes.length + " nodes, " + g.edges.length + " edges around " + state.root +
               " (" + state.direction.toLowerCase() + ", depth " + state.depth +
               (state.asOf ? ", as of " + state.asOf : "") + ")" + (cut ? "; " + cut : ""));
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

  var showPanel = window.lineagePanel(gql, state, GRAPH);

  window.lineage = { cy: cy, state: state, select: select, draw: draw };
  var initial = new URLSearchParams(window.location.search).get("root");
  if (initial) { select(initial); }
})();
