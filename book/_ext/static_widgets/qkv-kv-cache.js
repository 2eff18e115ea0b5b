/* qkv static widgets, kind "kv-cache": the KV-cache calculator of the MQA/GQA chapter, recomputed
 * in the page. The calculator has two free integer boxes and five dropdowns, too many settings
 * to pre-render, and its output is one formula (qkv/kv_cache.py: kv_cache_bytes):
 *     bytes = 2 (K and V) * layers * KV heads * d_head * tokens * batch * bytes per element
 * This file prints the same table as qkv/widgets/mqa_gqa.py (tests/test_static_widgets.py
 * compares them character for character) and draws its curves as an SVG chart.
 * Plain ES2020 (BigInt), no dependency, works from file://.
 */
(function () {
  "use strict";

  var SVG = "http://www.w3.org/2000/svg";
  var COLORS = ["#1f77b4", "#ff7f0e", "#2ca02c"];  // matplotlib's first three cycle colours
  var DASHES = ["", "", "6 4"];                      // "-", "-o", "--" as in the live figure

  function divisors(n) {
    var out = [];
    for (var d = 1; d <= n; d++) if (n % d === 0) out.push(d);
    return out;
  }

  // Python: int(round(2 * layers * kv * d_head * tokens * batch * bytes_per_element)). The integer
  // product is exact in Python, then converted to a float (round half to even, as Number(BigInt)).
  function cacheBytes(layers, kv, dHead, tokens, batch, bytesPerElement) {
    var product = 2n * BigInt(layers) * BigInt(kv) * BigInt(dHead) * BigInt(tokens) * BigInt(batch);
    return BigInt(Math.round(Number(product) * bytesPerElement));
  }

  function commas(big) {
    return big.toString().replace(/\B(?=(\d{3})+(?!\d))/g, ",");
  }

  // Python's f"{total / GIB:.3f}": total / 2**30 is exact in binary, so round its exact decimal
  // value half to even at 3 places (Number.toFixed rounds ties up: 0.0625 -> "0.063", not "0.062").
  function fixed3(total, gib) {
    var scaled = total * 1000n;
    var g = BigInt(gib);
    var q = scaled / g, r = scaled % g;
    if (2n * r > g || (2n * r === g && q % 2n === 1n)) q += 1n;
    var s = q.toString().padStart(4, "0");
    return s.slice(0, -3) + "." + s.slice(-3);
  }

  function rows(st) {
    var middle = (st.kv > 1 && st.kv < st.heads) ? "GQA-" + st.kv : "your setting";
    return [["MHA", st.heads], [middle, st.kv], ["MQA", 1]].map(function (r) {
      return {
        name: r[0], kv: r[1],
        perToken: cacheBytes(st.layers, r[1], st.dHead, 1, 1, st.bytes),
        total: cacheBytes(st.layers, r[1], st.dHead, st.context, st.batch, st.bytes)
      };
    });
  }

  function tableText(st, gib) {
    var header = commas(BigInt(st.context)) + " tok \u00d7 " + st.batch;
    var lines = ["".padEnd(13) + "KV heads".padStart(9) + "bytes/token".padStart(13) + header.padStart(20)];
    rows(st).forEach(function (r) {
      lines.push(r.name.padEnd(13) + String(r.kv).padStart(9) + commas(r.perToken).padStart(13) +
                 fixed3(r.total, gib).padStart(16) + " GiB");
    });
    return lines.join("\n") + "\n";
  }

  function el(name, attrs, text) {
    var node = document.createElementNS(SVG, name);
    Object.keys(attrs || {}).forEach(function (k) { node.setAttribute(k, attrs[k]); });
    if (text !== undefined) node.textContent = text;
    return node;
  }

  function powerLabel(parent, x, y, exponent, anchor) {
    var text = el("text", {x: x, y: y, "text-anchor": anchor, "font-size": 11});
    text.appendChild(el("tspan", {}, "2"));
    text.appendChild(el("tspan", {dy: -5, "font-size": 8}, String(exponent)));
    parent.appendChild(text);
  }

  // Log-log chart of the three cache sizes (GiB) against context length, like the live figure.
  function chart(st, cfg) {
    var W = 700, H = 330, left = 64, right = 16, top = 30, bottom = 46;
    var series = rows(st).map(function (r) {
      return {label: r.name + " (" + r.kv + " KV heads)", values: cfg.contexts.map(function (c) {
        return Number(cacheBytes(st.layers, r.kv, st.dHead, c, st.batch, st.bytes)) / cfg.gib;
      })};
    });
    var lx = cfg.contexts.map(Math.log2);
    var ly = [].concat.apply([], series.map(function (s) { return s.values.map(Math.log2); }));
    var x0 = Math.min.apply(null, lx), x1 = Math.max.apply(null, lx);
    var y0 = Math.min.apply(null, ly), y1 = Math.max.apply(null, ly);
    var mx = 0.05 * (x1 - x0), my = 0.05 * Math.max(y1 - y0, 1);  // matplotlib's 5% margins
    x0 -= mx; x1 += mx; y0 -= my; y1 += my;
    function X(v) { return left + (Math.log2(v) - x0) / (x1 - x0) * (W - left - right); }
    function Y(v) { return top + (y1 - Math.log2(v)) / (y1 - y0) * (H - top - bottom); }

    var title = st.layers + " layers, d_head " + st.dHead + ", " + st.dtype + ", batch " + st.batch;
    var alt = "KV-cache calculator (layers = " + st.layers + ", query heads = " + st.heads + ", KV heads = " +
      st.kv + ", d_head = " + st.dHead + ", cache dtype = " + st.dtype + ", context = " + st.context +
      ", batch = " + st.batch + "). KV cache in GiB against context length, " + title + ": " +
      series.map(function (s) { return s.label + " " + s.values[s.values.length - 1].toPrecision(3) +
        " GiB at " + cfg.contexts[cfg.contexts.length - 1] + " tokens"; }).join("; ");
    var svg = el("svg", {viewBox: "0 0 " + W + " " + H, width: W, height: H, role: "img", "aria-label": alt,
                         "font-family": "DejaVu Sans, Arial, sans-serif", class: "qkv-kv-chart"});
    svg.appendChild(el("rect", {x: 0, y: 0, width: W, height: H, fill: "#ffffff"}));
    var plot = el("g", {});
    svg.appendChild(plot);
    plot.appendChild(el("rect", {x: left, y: top, width: W - left - right, height: H - top - bottom,
                                 fill: "none", stroke: "#000000", "stroke-width": 0.8}));
    for (var e = Math.ceil(x0); e <= Math.floor(x1); e++) {
      var xt = X(Math.pow(2, e));
      plot.appendChild(el("line", {x1: xt, x2: xt, y1: H - bottom, y2: H - bottom + 4, stroke: "#000000"}));
      if (e % 2 === 0) powerLabel(plot, xt, H - bottom + 17, e, "middle");
    }
    var yStep = Math.max(1, Math.ceil((Math.floor(y1) - Math.ceil(y0) + 1) / 8));
    for (var f = Math.ceil(y0); f <= Math.floor(y1); f++) {
      var yt = Y(Math.pow(2, f));
      plot.appendChild(el("line", {x1: left - 4, x2: left, y1: yt, y2: yt, stroke: "#000000"}));
      if (f % yStep === 0) powerLabel(plot, left - 7, yt + 4, f, "end");
    }
    plot.appendChild(el("text", {x: (left + W - right) / 2, y: H - 8, "text-anchor": "middle", "font-size": 12},
                        "context length (tokens)"));
    plot.appendChild(el("text", {x: 14, y: (top + H - bottom) / 2, "text-anchor": "middle", "font-size": 12,
                                 transform: "rotate(-90 14 " + (top + H - bottom) / 2 + ")"}, "KV cache (GiB)"));
    plot.appendChild(el("text", {x: (left + W - right) / 2, y: top - 10, "text-anchor": "middle", "font-size": 13},
                        title));
    var xc = X(st.context);
    plot.appendChild(el("line", {x1: xc, x2: xc, y1: top, y2: H - bottom, stroke: "#808080", "stroke-width": 0.8}));
    series.forEach(function (s, i) {
      var points = s.values.map(function (v, k) { return X(cfg.contexts[k]).toFixed(2) + "," + Y(v).toFixed(2); });
      plot.appendChild(el("polyline", {points: points.join(" "), fill: "none", stroke: COLORS[i], "stroke-width": 1.5,
                                       "stroke-dasharray": DASHES[i], "data-series": s.label,
                                       "data-gib": JSON.stringify(s.values)}));
      if (i === 1) s.values.forEach(function (v, k) {
        plot.appendChild(el("circle", {cx: X(cfg.contexts[k]), cy: Y(v), r: 2.5, fill: COLORS[i]}));
      });
      var ly0 = top + 14 + 16 * i;
      plot.appendChild(el("line", {x1: left + 10, x2: left + 34, y1: ly0, y2: ly0, stroke: COLORS[i], "stroke-width": 1.5,
                                   "stroke-dasharray": DASHES[i]}));
      plot.appendChild(el("text", {x: left + 40, y: ly0 + 4, "font-size": 10}, s.label));
    });
    return svg;
  }

  function setup(root) {
    var cfg = JSON.parse(root.querySelector("script.qkv-data").textContent);
    function field(name) { return root.querySelector('[data-qkv-field="' + name + '"]'); }
    var box = root.querySelector(".qkv-frame");
    var last = {};

    function intBox(input) {
      var v = parseInt(input.value, 10);
      if (isNaN(v)) return null;  // mid-edit (empty box): keep the last view
      return Math.min(Number(input.max), Math.max(Number(input.min), v));
    }

    function syncKvOptions() {
      var heads = Number(field("heads").value), kvSelect = field("kv");
      var options = divisors(heads), current = Number(kvSelect.value);
      var keep = options.indexOf(current) >= 0 ? current : options[options.length - 1];
      if (kvSelect.options.length !== options.length ||
          options.some(function (d, i) { return Number(kvSelect.options[i].value) !== d; })) {
        kvSelect.replaceChildren.apply(kvSelect, options.map(function (d) {
          var o = document.createElement("option");
          o.value = String(d); o.textContent = String(d);
          return o;
        }));
      }
      kvSelect.value = String(keep);
    }

    function update(event) {
      if (event && event.target === field("heads")) syncKvOptions();
      var layers = intBox(field("layers")), batch = intBox(field("batch"));
      if (layers === null) layers = last.layers;
      if (batch === null) batch = last.batch;
      if (event && event.type === "change") {
        field("layers").value = String(layers);
        field("batch").value = String(batch);
      }
      var st = {layers: layers, heads: Number(field("heads").value), kv: Number(field("kv").value),
                dHead: Number(field("d_head").value), dtype: field("dtype").value,
                context: Number(field("context").value), batch: batch};
      st.bytes = cfg.dtype_bytes[st.dtype];
      last = st;
      var pre = document.createElement("pre");
      pre.className = "qkv-frame-text";
      pre.textContent = tableText(st, cfg.gib);
      box.replaceChildren(pre, chart(st, cfg));
    }

    root.addEventListener("input", update);
    root.addEventListener("change", update);
    syncKvOptions();
    update();
  }

  window.qkvKvCache = {tableText: tableText, cacheBytes: cacheBytes, fixed3: fixed3};

  function init() {
    document.querySelectorAll('.qkv-static-widget[data-qkv-widget="kv-cache"]').forEach(setup);
  }
  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", init);
  else init();
})();
