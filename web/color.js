// Colour picker for the `color` input of PDFNet Composite.
// The input is a '#RRGGBB' string (io.Color). Frontend 1.48 draws its own "color" widget, older
// frontends a plain text box; either way this button (with a swatch of the current colour) opens
// the browser's own <input type=color> and writes the choice back into that widget, so the value
// the server gets stays the plain string it validates.
import { app } from "../../scripts/app.js";

const TARGETS = { PDFNetComposite: "color" };   // node id -> name of its colour input
const HEX = /^#[0-9a-fA-F]{6}$/;

function normalise(value) {
  if (typeof value !== "string") return "#ffffff";
  const v = value.trim();
  if (HEX.test(v)) return v.toLowerCase();
  const short = /^#([0-9a-fA-F])([0-9a-fA-F])([0-9a-fA-F])$/.exec(v);
  return short ? `#${short[1]}${short[1]}${short[2]}${short[2]}${short[3]}${short[3]}`.toLowerCase() : "#ffffff";
}

function openPicker(node, target) {
  // A throw-away off-screen input: the native dialog needs an element in the document.
  const input = document.createElement("input");
  input.type = "color";
  input.value = normalise(target.value);
  Object.assign(input.style, { position: "fixed", left: "-100px", top: "0", opacity: "0" });
  document.body.appendChild(input);
  const apply = () => {
    target.value = input.value.toLowerCase();
    target.callback?.(target.value, app.canvas, node);
    node.setDirtyCanvas(true, true);
  };
  input.addEventListener("input", apply);
  input.addEventListener("change", () => { apply(); input.remove(); });
  input.addEventListener("blur", () => setTimeout(() => input.remove(), 0));
  input.click();
  return input;
}

app.registerExtension({
  name: "pdfnet.color",
  async beforeRegisterNodeDef(nodeType, nodeData) {
    const inputName = TARGETS[nodeData.name];
    if (!inputName) return;
    const onNodeCreated = nodeType.prototype.onNodeCreated;
    nodeType.prototype.onNodeCreated = function () {
      const r = onNodeCreated?.apply(this, arguments);
      const target = this.widgets?.find((w) => w.name === inputName);
      if (!target) return r;
      const button = this.addWidget("button", "pdfnet_pick_color", null, () => openPicker(this, target),
                                    { serialize: false });
      button.label = "pick colour…";
      // Display only: not part of the workflow's widget values nor of the prompt.
      button.serialize = false;
      // Draw the current colour as a swatch on the button's right, so the colour is visible at a glance.
      const draw = button.draw;
      if (typeof draw === "function") {
        button.draw = function (ctx, node, width, y, height) {
          draw.apply(this, arguments);
          const h = height || 20;
          ctx.save();
          ctx.fillStyle = normalise(target.value);
          ctx.strokeStyle = "#000";
          ctx.fillRect(width - 15 - h, y + 3, h, h - 6);
          ctx.strokeRect(width - 15 - h, y + 3, h, h - 6);
          ctx.restore();
        };
      }
      this.pdfnetColorPicker = { button, target, open: () => openPicker(this, target) };
      return r;
    };
  },
});
