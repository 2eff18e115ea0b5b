/* qkv static widgets, kind "bpe": the tokenizer playground of the tokenization chapter, live in
 * the page. A JavaScript copy of qkv/bpe.py's encode (byte-level BPE, GPT-2 pre-tokenization,
 * special tokens kept whole); tests/test_static_widgets.py checks it against the Python encoder
 * on a corpus. The merges are inline in the page (see qkv/widgets/tokenization.py), so this
 * works from file:// with no network. Plain ES2018 (Unicode property escapes), no dependency.
 */
(function () {
  "use strict";

  // GPT-2's pre-tokenizer (qkv.bpe.GPT2_SPLIT_PATTERN). Python's `regex` module reads \s as
  // Unicode White_Space; JavaScript's \s also matches U+FEFF, so the property is spelled out.
  var SPLIT = /'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\p{White_Space}\p{L}\p{N}]+|\p{White_Space}+(?!\P{White_Space})|\p{White_Space}+/gu;
  var encoder = new TextEncoder();

  function decodeMerges(cfg) {
    var raw = atob(cfg.merges);
    var bytes = new Uint8Array(raw.length);
    for (var i = 0; i < raw.length; i++) bytes[i] = raw.charCodeAt(i);
    var view = new DataView(bytes.buffer);
    var size = cfg.merges_dtype === "u16" ? 2 : 4;
    var flat = [];
    for (var k = 0; k < bytes.length; k += size) flat.push(size === 2 ? view.getUint16(k, true) : view.getUint32(k, true));
    return flat;
  }

  function Tokenizer(cfg) {
    var flat = decodeMerges(cfg);
    this.nMerges = flat.length / 2;
    this.ranks = new Map();
    this.vocab = [];
    for (var b = 0; b < 256; b++) this.vocab.push(Uint8Array.of(b));
    for (var i = 0; i < this.nMerges; i++) {
      var a = flat[2 * i], c = flat[2 * i + 1];
      var key = a * 1048576 + c;
      if (!this.ranks.has(key)) this.ranks.set(key, i);  // Python's dict keeps the last; merges are distinct
      var left = this.vocab[a], right = this.vocab[c], joined = new Uint8Array(left.length + right.length);
      joined.set(left); joined.set(right, left.length);
      this.vocab.push(joined);
    }
    this.specials = cfg.specials;
    var self = this;
    this.specials.forEach(function (s) { self.vocab.push(encoder.encode(s)); });
    var escaped = this.specials.slice().sort(function (x, y) { return y.length - x.length; })
      .map(function (s) { return s.replace(/[.*+?^${}()|[\]\\]/g, "\\$&"); });
    this.splitter = escaped.length ? new RegExp("(" + escaped.join("|") + ")", "u") : null;
  }

  // Python qkv.bpe._encode_chunk: apply the earliest-learned merge present, everywhere, until none applies.
  Tokenizer.prototype.encodeChunk = function (ids) {
    while (ids.length >= 2) {
      var best = -1, bestRank = Infinity;
      for (var i = 0; i + 1 < ids.length; i++) {
        var r = this.ranks.get(ids[i] * 1048576 + ids[i + 1]);
        if (r !== undefined && r < bestRank) { bestRank = r; best = i; }
      }
      if (best < 0) break;
      var a = ids[best], b = ids[best + 1], out = [];
      for (var k = 0; k < ids.length;) {
        if (k + 1 < ids.length && ids[k] === a && ids[k + 1] === b) { out.push(256 + bestRank); k += 2; }
        else { out.push(ids[k]); k += 1; }
      }
      ids = out;
    }
    return ids;
  };

  // Python qkv.bpe.encode. A lone surrogate has no UTF-8 bytes: Python raises, so do we.
  Tokenizer.prototype.encode = function (text) {
    var lone = /\p{Surrogate}/u.exec(text);
    if (lone) {
      var cp = lone[0].charCodeAt(0).toString(16).toUpperCase();
      throw new Error("text contains a lone surrogate U+" + cp + " at index " +
                      Array.from(text.slice(0, lone.index)).length + ": it is not a Unicode character " +
                      "and has no UTF-8 encoding, so byte-level BPE rejects it");
    }
    var self = this, out = [];
    var pieces = this.splitter ? text.split(this.splitter) : [text];
    pieces.forEach(function (piece, i) {
      if (!piece) return;
      var special = self.splitter && i % 2 === 1;  // split() puts captured separators at odd places
      if (special) { out.push(256 + self.nMerges + self.specials.indexOf(piece)); return; }
      (piece.match(SPLIT) || []).forEach(function (chunk) {
        Array.prototype.push.apply(out, self.encodeChunk(Array.from(encoder.encode(chunk))));
      });
    });
    return out;
  };

  // Python bytes.decode("utf-8", errors="backslashreplace"): bytes that do not form a valid
  // UTF-8 sequence become \xNN, one per byte.
  function decodeBackslash(bytes) {
    var out = "", i = 0;
    function cont(k) { return k < bytes.length && (bytes[k] & 0xc0) === 0x80; }
    while (i < bytes.length) {
      var b = bytes[i], n = 0, lo = 0x80, hi = 0xbf;
      if (b < 0x80) { out += String.fromCharCode(b); i += 1; continue; }
      if (b >= 0xc2 && b <= 0xdf) n = 1;
      else if (b >= 0xe0 && b <= 0xef) { n = 2; if (b === 0xe0) lo = 0xa0; if (b === 0xed) hi = 0x9f; }
      else if (b >= 0xf0 && b <= 0xf4) { n = 3; if (b === 0xf0) lo = 0x90; if (b === 0xf4) hi = 0x8f; }
      var ok = n > 0 && i + n < bytes.length && bytes[i + 1] >= lo && bytes[i + 1] <= hi;
      for (var k = 2; ok && k <= n; k++) ok = cont(i + k);
      if (ok) {
        var cp = b & (0x3f >> n);
        for (var m = 1; m <= n; m++) cp = (cp << 6) | (bytes[i + m] & 0x3f);
        out += String.fromCodePoint(cp);
        i += n + 1;
      } else {
        out += "\\x" + b.toString(16).padStart(2, "0");
        i += 1;
      }
    }
    return out;
  }

  Tokenizer.prototype.tokenStrings = function (ids) {
    var self = this;
    return ids.map(function (i) { return decodeBackslash(self.vocab[i]); });
  };

  // Python's f"{x:.2f}" rounds the float's exact value half to even; toFixed rounds ties up.
  // A tie at two decimals needs x = odd / 8 exactly (x * 100 = k + 1/2 with x a binary fraction).
  function pyFixed2(x) {
    var eighths = x * 8;
    if (Number.isInteger(eighths) && Math.abs(eighths) % 2 === 1) {
      var k = Math.floor(x * 100);
      if (k % 2 !== 0) k += 1;
      var s = String(Math.abs(k)).padStart(3, "0");
      return (k < 0 ? "-" : "") + s.slice(0, -2) + "." + s.slice(-2);
    }
    return x.toFixed(2);
  }

  function visible(token) {
    return token.replace(/ /g, "\u2423").replace(/\n/g, "\u21b5").replace(/\t/g, "\u21e5");
  }

  function setup(root) {
    var cfg = JSON.parse(root.querySelector("script.qkv-data").textContent);
    var tokenizer = new Tokenizer(cfg);
    var input = root.querySelector('[data-qkv-field="text"]');
    var box = root.querySelector(".qkv-frame");
    root.qkvTokenizer = tokenizer;

    function update() {
      var text = input.value, ids = [], tokens = [], title;
      var nChars = Array.from(text).length;
      try {
        ids = tokenizer.encode(text);
        tokens = tokenizer.tokenStrings(ids);
        title = cfg.label + ": " + ids.length + " tokens for " + nChars + " characters (" +
          pyFixed2(ids.length / Math.max(nChars, 1)) + " per character)";
      } catch (err) {
        title = "cannot encode: " + err.message;
        ids = [];
      }
      var heading = document.createElement("p");
      heading.className = "qkv-tokens-title";
      heading.textContent = title;
      var line = document.createElement("div");
      line.className = "qkv-tokens";
      tokens.forEach(function (tok, k) {
        var span = document.createElement("span");
        span.className = "qkv-token";
        span.style.background = cfg.colors[k % cfg.colors.length];
        span.textContent = visible(tok) || " ";
        line.appendChild(span);
        line.appendChild(document.createTextNode("\u200b"));  // lets long token runs wrap between boxes
      });
      var idsText = document.createElement("pre");
      idsText.className = "qkv-frame-text";
      idsText.textContent = "ids (this course's numbering: bytes are 0-255): [" + ids.join(", ") + "]\n";
      box.replaceChildren(heading, line, idsText);
    }

    input.addEventListener("input", update);
    update();
  }

  window.qkvBpe = {Tokenizer: Tokenizer, decodeBackslash: decodeBackslash, pyFixed2: pyFixed2};

  function init() {
    document.querySelectorAll('.qkv-static-widget[data-qkv-widget="bpe"]').forEach(setup);
  }
  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", init);
  else init();
})();
