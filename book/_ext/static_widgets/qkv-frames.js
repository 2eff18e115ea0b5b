/* qkv static widgets, kind "frames": show the pre-rendered frame that matches the controls.
 *
 * Markup and data are written by qkv/widgets/static_html.py. Every frame is inline in the page
 * (a JSON script inside the widget), so this works from file:// with no network and no other
 * file. The controls are native <select>, <input type=range|checkbox|radio>: keyboard operable
 * as they are. Plain ES2017, no dependency.
 */
(function () {
  "use strict";

  function controlValue(control) {
    if (control.tagName === "FIELDSET") {
      var checked = control.querySelector("input[type=radio]:checked");
      return checked ? Number(checked.value) : 0;
    }
    if (control.type === "checkbox") return control.checked ? 1 : 0;
    return Number(control.value);
  }

  function outputElement(output, images) {
    var kind = output[0];
    var el;
    if (kind === "img") {
      el = document.createElement("img");
      el.className = "qkv-frame-image";
      el.src = images[output[1]];
      el.alt = output[2];
    } else if (kind === "text") {
      el = document.createElement("pre");
      el.className = "qkv-frame-text";
      el.textContent = output[1];
    } else {
      el = document.createElement("div");
      el.className = "qkv-frame-html";
      el.innerHTML = output[1];  // built by our own code at build time, not user input
    }
    return el;
  }

  function setup(root) {
    var data = JSON.parse(root.querySelector("script.qkv-data").textContent);
    var controls = Array.prototype.slice.call(root.querySelectorAll("[data-qkv-control]"));
    controls.sort(function (a, b) { return a.dataset.qkvControl - b.dataset.qkvControl; });
    var boxes = data.parts.map(function (_, k) { return root.querySelector('[data-qkv-part="' + k + '"]'); });
    var shown = data.parts.map(function () { return -1; });

    function update() {
      var indices = controls.map(function (control) {
        var index = controlValue(control);
        if (control.type === "range") {
          var label = JSON.parse(control.dataset.qkvLabels)[index];
          control.setAttribute("aria-valuetext", label);
          var readout = control.parentNode.querySelector("output");
          if (readout) readout.textContent = label;
        }
        return index;
      });
      data.parts.forEach(function (part, k) {
        var frame = 0;  // row-major over the part's controls, last fastest
        part.controls.forEach(function (c) { frame = frame * data.shape[c] + indices[c]; });
        if (frame === shown[k]) return;
        shown[k] = frame;
        boxes[k].replaceChildren.apply(boxes[k], part.frames[frame].map(function (o) {
          return outputElement(o, data.images);
        }));
        boxes[k].dataset.qkvFrame = String(frame);
      });
    }

    root.addEventListener("input", update);
    root.addEventListener("change", update);
    update();
  }

  function init() {
    document.querySelectorAll('.qkv-static-widget[data-qkv-widget="frames"]').forEach(setup);
  }

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", init);
  else init();
})();
