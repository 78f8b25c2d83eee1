// The lineage page's side panel (lineage.js calls it; loaded before it): a selected node's
// facts and the sections its kind has, each from GraphQL. window.lineagePanel(gql, state,
// GRAPH) answers showPanel(node).
(function () {
  "use strict";

  window.lineagePanel = function (gql, state, GRAPH) {
    var $ = function (id) { return document.getElementById(id); };

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

    // Whether a view is served from a memory store, which loads its source itself (no runs):
    // its feature's (or its first feature's) online table is memory://store/view. A view
    // not served yet has no online table: false.
    var ONLINE = "query ($id: String!) { feature(id: $id) { producedBy { name role } } }";
    function onMemoryStore(view, featureId) {
      var feature = featureId ? Promise.resolve(featureId) :
        gql(GRAPH, { root: "view:" + view, dir: "DOWNSTREAM", depth: 1, asOf: null }).then(function (data) {
          var f = data.graph && data.graph.nodes.find(function (n) { return n.kind === "feature"; });
          return f ? f.label : null;
        });
      return feature.then(function (id) {
        if (!id) { return false; }
        return gql(ONLINE, { id: id }).then(function (data) {
          return Boolean(data.feature && data.feature.producedBy.some(function (t) {
            return t.role === "online" && t.name.indexOf("memory://") === 0;
          }));
        });
      });
    }

    // The latest data version of a view and the run that published it: the view's upstream.
    function latestDataVersion(view, featureId) {
      return gql(GRAPH, { root: "view:" + view, dir: "UPSTREAM", depth: 2, asOf: state.asOf }).then(function (data) {
        if (!data.graph) { return el("p", "none recorded", "none"); }
        var versions = data.graph.nodes.filter(function (n) { return n.kind === "data_version"; });
        if (!versions.length) {
          return onMemoryStore(view, featureId).then(function (memory) {
            return el("p", memory ? "none recorded (a memory store loads its source itself)"
                                  : "none recorded (no run recorded in the graph)", "none");
          });
        }
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
        return latestDataVersion(node.attributes.view, node.label).then(function (dv) {
          if (!add("Latest data version", dv)) { return; }
          add("Changes upstream", changesTable(f.changes));
          return driftSection(node.label).then(function (d) { add("Drift", d); });
        });
      });
    }


    return showPanel;
  };
})();
