// Before/after slider on the PDFNet Compare node.
// The node (nodes/compare.py) saves the input and the result as temp PNGs and returns them under
// the ui keys "pdfnet_before" / "pdfnet_after" (not "images", so the frontend does not draw its
// own preview on top of the slider).
// Where the server declares core's IMAGECOMPARE widget (ComfyUI 0.13+), that widget is the slider:
// its value {beforeImages, afterImages} is what the Nodes 2.0 renderer draws, and on the classic
// canvas (where core draws only a "Nodes 2.0 only" notice) this file gives the same widget a canvas
// drawing. On an older ComfyUI this file adds its own canvas widget. Left of the split: the input;
// right: the result (on the canvas over a checkerboard, so transparency is visible).
import { app } from "../../scripts/app.js";
import { api } from "../../scripts/api.js";

const NODE_ID = "PDFNetCompare";
const WIDGET = "pdfnet_compare";
const CORE_TYPE = "IMAGECOMPARE";
const MIN_HEIGHT = 200;

// The name of the node's IMAGECOMPARE input (core's slider widget), or null where the server lacks it.
function coreViewInput(nodeData) {
  for (const group of [nodeData.input?.required, nodeData.input?.optional]) {
    for (const [name, spec] of Object.entries(group || {})) if (spec?.[0] === CORE_TYPE) return name;
  }
  return null;
}

function viewUrl(item) {
  const q = new URLSearchParams({ filename: item.filename, subfolder: item.subfolder || "", type: item.type || "temp" });
  // rand: temp names can repeat across runs; without it the browser would show a cached old picture
  return api.apiURL(`/view?${q}&rand=${Math.random()}`);
}

function loadImage(item) {
  return new Promise((resolve, reject) => {
    const img = new Image();
    img.onload = () => resolve(img);
    img.onerror = () => reject(new Error(`cannot load ${item.filename}`));
    img.src = viewUrl(item);
  });
}

let checker = null;
function checkerPattern(ctx) {
  // One small tile reused as a pattern: cheap to draw at any zoom.
  if (!checker) {
    const c = document.createElement("canvas");
    c.width = c.height = 16;
    const g = c.getContext("2d");
    g.fillStyle = "#9a9a9a"; g.fillRect(0, 0, 16, 16);
    g.fillStyle = "#d0d0d0"; g.fillRect(0, 0, 8, 8); g.fillRect(8, 8, 8, 8);
    checker = c;
  }
  return ctx.createPattern(checker, "repeat");
}

function fit(img, x, y, w, h) {
  const s = Math.min(w / img.naturalWidth, h / img.naturalHeight);
  const dw = img.naturalWidth * s, dh = img.naturalHeight * s;
  return [x + (w - dw) / 2, y + (h - dh) / 2, dw, dh];
}

// The slider's state and its classic-canvas drawing, in the legacy custom-widget interface
// (draw/computeSize/mouse), which LiteGraph calls on any widget that has them.
function canvasSlider() {
  return {
    split: 0.5,          // 0..1 across the picture
    index: 0,            // which image of a batch
    pairs: [],           // [{ before: Image, after: Image }]
    y: 0,
    computeSize(width) { return [width, MIN_HEIGHT]; },
    draw(ctx, node, width, y) {
      this.y = y;
      const h = Math.max(MIN_HEIGHT, node.size[1] - y - 4);
      const pair = this.pairs[this.index];
      ctx.save();
      if (!pair) {
        ctx.fillStyle = "#888";
        ctx.font = "12px sans-serif";
        ctx.textAlign = "center";
        ctx.fillText("run the workflow to compare", width / 2, y + h / 2);
        ctx.restore();
        return;
      }
      const [bx, by, bw, bh] = fit(pair.before, 4, y, width - 8, h);
      const splitX = bx + bw * this.split;
      ctx.fillStyle = checkerPattern(ctx);
      ctx.fillRect(bx, by, bw, bh);
      // input on the left of the split
      ctx.save();
      ctx.beginPath(); ctx.rect(bx, by, splitX - bx, bh); ctx.clip();
      ctx.drawImage(pair.before, bx, by, bw, bh);
      ctx.restore();
      // result on the right, in the input's frame (same size for a cut-out)
      ctx.save();
      ctx.beginPath(); ctx.rect(splitX, by, bx + bw - splitX, bh); ctx.clip();
      ctx.drawImage(pair.after, bx, by, bw, bh);
      ctx.restore();
      ctx.strokeStyle = "#fff"; ctx.lineWidth = 2;
      ctx.beginPath(); ctx.moveTo(splitX, by); ctx.lineTo(splitX, by + bh); ctx.stroke();
      ctx.fillStyle = "rgba(0,0,0,0.55)";
      ctx.font = "11px sans-serif";
      const label = this.pairs.length > 1 ? `  ${this.index + 1}/${this.pairs.length} (click to step)` : "";
      ctx.fillRect(bx, by, ctx.measureText("input | result" + label).width + 10, 16);
      ctx.fillStyle = "#fff"; ctx.textAlign = "left";
      ctx.fillText("input | result" + label, bx + 5, by + 12);
      ctx.restore();
    },
    setSplitFromX(x, node) {
      const pair = this.pairs[this.index];
      if (!pair) return;
      const h = Math.max(MIN_HEIGHT, node.size[1] - this.y - 4);
      const [bx, , bw] = fit(pair.before, 4, this.y, node.size[0] - 8, h);
      this.split = Math.min(1, Math.max(0, (x - bx) / bw));
      node.setDirtyCanvas(true, false);
    },
    mouse(event, pos, node) {
      // Drag on the picture moves the split; a click without dragging steps through a batch.
      const t = event.type;
      if (t === "pointerdown" || t === "mousedown") {
        this.downX = pos[0]; this.setSplitFromX(pos[0], node); return true;
      }
      if (t === "pointermove" || t === "mousemove") { this.setSplitFromX(pos[0], node); return true; }
      if ((t === "pointerup" || t === "mouseup") && this.pairs.length > 1 && Math.abs(pos[0] - (this.downX ?? -99)) < 3) {
        this.index = (this.index + 1) % this.pairs.length;
        node.setDirtyCanvas(true, false);
      }
      return true;
    },
  };
}

function ownWidget() {
  return {
    name: WIDGET,
    type: "pdfnet_compare",
    value: null,
    // Display only: nothing to save in the workflow or to send to the server. canvasOnly: the
    // Nodes 2.0 renderer skips it (it cannot draw a canvas widget).
    serialize: false,
    options: { serialize: false, canvasOnly: true },
    ...canvasSlider(),
  };
}

// Core's widget is a class instance: the classic canvas hands it clicks and drags (onClick/onDrag
// with the canvas event) instead of calling mouse().
function adoptCoreWidget(widget) {
  Object.assign(widget, canvasSlider());
  const press = ({ e, node }) => widget.setSplitFromX(e.canvasX - node.pos[0], node);
  widget.onClick = press;
  widget.onDrag = press;
  return widget;
}

function viewUrls(items) {
  return (items || []).map(viewUrl);
}

app.registerExtension({
  name: "pdfnet.compare",
  async beforeRegisterNodeDef(nodeType, nodeData) {
    if (nodeData.name !== NODE_ID) return;

    const coreName = coreViewInput(nodeData);
    const onNodeCreated = nodeType.prototype.onNodeCreated;
    nodeType.prototype.onNodeCreated = function () {
      const r = onNodeCreated?.apply(this, arguments);
      const core = coreName && this.widgets?.find((w) => w.name === coreName);
      this.pdfnetCompare = core ? adoptCoreWidget(core)
        : this.addCustomWidget(ownWidget()) || this.widgets.find((w) => w.name === WIDGET);
      this.setSize([Math.max(this.size[0], 320), Math.max(this.size[1], 300)]);
      return r;
    };

    // Hovering also moves the split (no click needed), like the usual image comparers.
    const onMouseMove = nodeType.prototype.onMouseMove;
    nodeType.prototype.onMouseMove = function (e, pos) {
      const w = this.pdfnetCompare;
      if (w && pos && pos[1] > w.y) w.setSplitFromX(pos[0], this);
      return onMouseMove?.apply(this, arguments);
    };

    const onExecuted = nodeType.prototype.onExecuted;
    nodeType.prototype.onExecuted = function (message) {
      onExecuted?.apply(this, arguments);
      const before = message?.pdfnet_before || [];
      const after = message?.pdfnet_after || [];
      const w = this.pdfnetCompare;
      if (!w) return;
      if (coreName) {
        // what the Nodes 2.0 widget draws (core's own ImageCompare node sets the same value)
        w.value = { beforeImages: viewUrls(before), afterImages: viewUrls(after) };
        w.callback?.(w.value);
      }
      const n = Math.max(before.length, after.length);
      // A batch of one input against many results (or the reverse) reuses the single picture.
      const jobs = [];
      for (let i = 0; i < n; i++) {
        const b = before[Math.min(i, before.length - 1)], a = after[Math.min(i, after.length - 1)];
        jobs.push(Promise.all([loadImage(b), loadImage(a)]).then(([bi, ai]) => ({ before: bi, after: ai })));
      }
      w.loading = Promise.all(jobs).then((pairs) => {
        w.pairs = pairs;
        w.index = Math.min(w.index, Math.max(0, pairs.length - 1));
        this.setDirtyCanvas(true, true);
        return pairs.length;
      }).catch((e) => { console.error("[pdfnet.compare]", e); w.pairs = []; return 0; });
    };
  },
});
