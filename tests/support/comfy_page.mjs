// Drives the real ComfyUI frontend (served by a loopback server) in Debian's headless Chromium
// through playwright-core. One browser for a list of jobs, because starting Chromium is the slow part.
//
//   PW_DIR=<folder with node_modules/playwright-core> node comfy_page.mjs JOBS.json > RESULT.json
//
// JOBS.json: {"url": "http://127.0.0.1:PORT", "jobs": [job, ...]} with each job one of
//   {"mode": "export", "api": "wf_api.json", "ui_out": "wf.json", "png": "shot.png", "models": [...]}
//      load an API workflow with the frontend's own loader, lay it out, and write what the frontend
//      serializes (app.graph.serialize(): the UI format it saves), plus `models` metadata.
//   {"mode": "check", "ui": "wf.json", "png": "shot.png", "queue": false, "widgets": {type: {name: value}}}
//      load a UI workflow, report node types the server does not know and the registered
//      extensions; optionally set widget values, queue it from the UI and report what the
//      PDFNet Compare widgets received.
//   {"mode": "slider", "ui": "wf.json", "widgets": {...}, "node": "PDFNetCompare", "shots": {"empty", "left", "right"}}
//      load, queue from the UI, then screenshot the comparer's box as the page shows it: before the
//      run, and with the pointer at the picture's left and right edges (the slider follows it).
//   {"mode": "picker", "ui": "wf.json", "widgets": {...}, "png": "box.png"}
//      screenshot PDFNet Composite's box, then click its "pick colour…" button as a user does and
//      report whether the colour dialog's <input type=color> opened.
//   {"mode": "templates", "png": "shot.png", "pack": "ComfyUI-PDFNet"}
//      open the template browser, choose the pack's category, report its cards and thumbnails.
//   {"mode": "locale", "types": [node type, ...], "png": "shot.png"}
//      add those nodes fresh (as from the node library) and report their titles and socket labels.
//   {"mode": "blueprint", "api": "body_api.json", "out": "subgraphs/Name.json", "name": ..., "description": ...,
//    "keep": ["LoadImage", ...], "promote": [[class_type, widget, label?], ...]}
//      load an API workflow, turn every node whose type is not in `keep` into one subgraph with the
//      frontend's own "Convert to Subgraph", and write that node as the frontend publishes a blueprint
//      (canvas._serializeItems of the subgraph node), with the promoted widgets shown on it.
//   {"mode": "run_blueprint", "name": "Remove Background (PDFNet)", "inputs": {input: image file},
//    "widgets": {class_type: {widget: value}}}
//      add the blueprint the server lists under /global_subgraphs the way the node library does
//      (canvas._deserializeItems of its nodes and subgraphs), feed its image inputs from Load Image
//      nodes, preview its outputs, queue it and report how the run ended and what each output showed.
// Any job may carry "settings": {id: value}, stored on the server before its page opens (for
// example Comfy.VueNodes.Enabled, the Nodes 2.0 renderer, or Comfy.Locale).
import { createRequire } from "module";
import fs from "fs";
import path from "path";

const require = createRequire(import.meta.url);
let pw;
try { pw = require("playwright-core"); }
catch { pw = require(path.join(process.env.PW_DIR || ".", "node_modules", "playwright-core")); }

const LOOPBACK = ["127.0.0.1", "localhost", "[::1]"];
const spec = JSON.parse(fs.readFileSync(process.argv[2], "utf8"));
const url = spec.url.replace(/\/$/, "");
if (!LOOPBACK.includes(new URL(url).hostname)) { console.error("loopback only"); process.exit(2); }

// First-run dialogs would cover the canvas in the screenshots; the minimap too; and below the
// level-of-detail threshold the canvas drops node titles and widgets, which the pictures need.
const postSetting = (k, v) =>
  fetch(`${url}/settings/${encodeURIComponent(k)}`, { method: "POST", body: JSON.stringify(v) }).catch(() => {});
for (const [k, v] of Object.entries({ "Comfy.TutorialCompleted": true, "Comfy.OnboardingCoachmarks.Seen": true,
                                      "Comfy.Workflow.ShowMissingModelsWarning": false, "Comfy.Minimap.Visible": false, "Comfy.Workflow.Persist": false,
                                      "LiteGraph.Canvas.MinFontSizeForLOD": 1,
                                      "LiteGraph.Canvas.LowQualityRenderingZoomThreshold": 0.1 })) {
  await fetch(`${url}/settings/${encodeURIComponent(k)}`, { method: "POST", body: JSON.stringify(v) }).catch(() => {});
}

const browser = await pw.chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  headless: true,
  args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync"],
});
const logs = [];
const results = [];
try {
  let context = null, page = null;
  const newPage = async () => {
    if (context) await context.close();
    context = await browser.newContext({ viewport: { width: 1280, height: 760 } });
    page = await context.newPage();
    page.on("console", (m) => logs.push(`[console.${m.type()}] ${m.text()}`));
    page.on("pageerror", (e) => logs.push(`[pageerror] ${e.message}`));
    page.on("response", (r) => { if (r.status() >= 400) logs.push(`[http ${r.status()}] ${r.url()}`); });
    // Nothing leaves the machine: fonts, CDNs and telemetry are refused.
    await page.route("**/*", (route) => {
      const u = route.request().url();
      return LOOPBACK.includes(new URL(u).hostname) || u.startsWith("data:") || u.startsWith("blob:")
        ? route.continue() : route.abort();
    });
  };
  // A fresh context (storage) per job: the frontend keeps open workflows and node previews by node
  // id in the browser's storage, so a second workflow would show the first one's pictures.
  const openPage = async () => {
    await newPage();
    await page.goto(url, { waitUntil: "domcontentloaded", timeout: 120000 });
    await page.waitForFunction(() => window.app && window.app.graph && document.querySelector("canvas"), null,
                               { timeout: 120000 });
    await page.waitForTimeout(1000);
    // Toasts (e.g. "checkpoint missing" for the generative workflow, expected here) would cover the graph.
    const hideToasts = () => page.addStyleTag({ content: ".p-toast, [role=alert], [data-pc-name=toast] { display: none !important; }" });
    // the first-run template can still be loading (its blocked model fetches surface as errors here): once more
    await hideToasts().catch(async () => { await page.waitForTimeout(2000); await hideToasts(); });
  };

  const hideNotices = () => page.evaluate(() => {
    // The missing-model notice (expected: checkpoints are not shipped) floats over the graph.
    for (const el of document.querySelectorAll("body *")) {
      if (el.children.length || !/is missing|missing models/i.test(el.textContent || "")) continue;
      let box = el;   // climb to the notice's own panel (the widest ancestor still narrower than 700 px)
      while (box.parentElement && box.parentElement.getBoundingClientRect().width < 700) box = box.parentElement;
      box.style.display = "none";
    }
  });
  const fitView = async () => {
    await page.evaluate(async () => {
      try { await window.app.extensionManager.command.execute("Comfy.Canvas.FitView"); } catch (e) {}
      window.app.canvas.setDirty(true, true);
    });
    await page.waitForTimeout(600);
    await hideNotices();
  };


  const loadUi = (file, widgets) => page.evaluate(async ({ ui, name, widgets }) => {
    await window.app.loadGraphData(ui, true, true, name);
    for (const node of window.app.graph._nodes) {
      for (const [wname, value] of Object.entries((widgets || {})[node.type] || {})) {
        const w = node.widgets?.find((x) => x.name === wname);
        if (w) w.value = value;
      }
    }
  }, { ui: JSON.parse(fs.readFileSync(file, "utf8")), name: path.basename(file), widgets });

  const queueAndWait = () => page.evaluate(() => new Promise((resolve) => {
    const api = window.app.api;
    const done = (ev, ok) => resolve({ ok, type: ev.type, detail: ev.detail?.exception_message || null });
    api.addEventListener("execution_success", (e) => done(e, true), { once: true });
    api.addEventListener("execution_error", (e) => done(e, false), { once: true });
    window.app.queuePrompt(0, 1).then((r) => { if (r === false) resolve({ ok: false, type: "not queued" }); });
    setTimeout(() => resolve({ ok: false, type: "timeout" }), 240000);
  }));

  // Where a node is on the page (CSS pixels): its DOM element under Nodes 2.0, else its box on the canvas.
  const nodeBox = (type) => page.evaluate((type) => {
    const node = window.app.graph._nodes.find((n) => n.type === type);
    const el = document.querySelector(`[data-node-id="${node.id}"]`);
    if (el) {
      const r = el.getBoundingClientRect();
      const v = el.querySelector("[data-testid=image-compare-viewport]")?.getBoundingClientRect();
      return { vue: true, x: r.left, y: r.top, w: r.width, h: r.height,
               picture: v ? { x: v.left, y: v.top, w: v.width, h: v.height } : null };
    }
    const c = window.app.canvas, rect = c.canvas.getBoundingClientRect(), s = c.ds.scale;
    const title = window.LiteGraph?.NODE_TITLE_HEIGHT ?? 30;
    const x = rect.left + (node.pos[0] + c.ds.offset[0]) * s, y = rect.top + (node.pos[1] - title + c.ds.offset[1]) * s;
    const w = node.pdfnetCompare;
    const top = w ? y + (title + w.y) * s : null;
    return { vue: false, x, y, w: node.size[0] * s, h: (node.size[1] + title) * s,
             picture: w ? { x: x + 4 * s, y: top, w: (node.size[0] - 8) * s, h: y + (node.size[1] + title) * s - top } : null };
  }, type);

  // Put the node clear of the others (right of the whole graph) and in view, away from the page's overlays.
  const centreOn = (type, size) => page.evaluate(({ type, size }) => {
    const nodes = window.app.graph._nodes;
    const node = nodes.find((n) => n.type === type);
    if (size) {
      node.setSize(size);
      // assigned, not mutated: under Nodes 2.0 the setter moves the DOM node too
      node.pos = [Math.max(...nodes.filter((n) => n !== node).map((n) => n.pos[0] + n.size[0])) + 200, node.pos[1]];
    }
    const c = window.app.canvas;
    c.ds.scale = 1.0;
    c.ds.offset[0] = -node.pos[0] + 240;
    c.ds.offset[1] = -node.pos[1] + 140;
    c.setDirty(true, true);
  }, { type, size });

  const shootBox = async (box, file) => {
    const clip = { x: Math.max(0, box.x), y: Math.max(0, box.y), width: Math.min(box.w, 1280 - Math.max(0, box.x)),
                   height: Math.min(box.h, 760 - Math.max(0, box.y)) };
    await page.screenshot({ path: file, clip });
    return clip;
  };

  async function sliderJob(job) {
    const type = job.node || "PDFNetCompare";
    await loadUi(job.ui, job.widgets);
    await page.waitForTimeout(500);
    await centreOn(type, [520, 460]);
    await page.waitForTimeout(800);
    await hideNotices();
    const out = { mode: "slider", ui: job.ui, vue: await page.evaluate(() => !!window.LiteGraph?.vueNodesMode) };
    out.box_empty = await shootBox(await nodeBox(type), job.shots.empty);
    out.run = await queueAndWait();
    out.loaded = await page.evaluate(async (type) => {
      const node = window.app.graph._nodes.find((n) => n.type === type);
      const w = node.pdfnetCompare;
      return { widget: w?.type, pairs: await (w?.loading || Promise.resolve(0)), value: w?.type === "imagecompare" ? w.value : null };
    }, type);
    await page.waitForTimeout(1500);     // the Vue component's <img> elements load after the value is set
    await hideNotices();
    const box = await nodeBox(type);
    out.box = box;
    const pic = box.picture || { x: box.x, y: box.y + box.h * 0.3, w: box.w, h: box.h * 0.6 };
    const yMid = pic.y + pic.h / 2;
    for (const [side, x] of [["left", pic.x + 3], ["right", pic.x + pic.w - 3]]) {
      await page.mouse.move(x, yMid, { steps: 4 });
      await page.waitForTimeout(500);
      out[`box_${side}`] = await shootBox(await nodeBox(type), job.shots[side]);
    }
    out.images = await page.evaluate((type) => {
      const node = window.app.graph._nodes.find((n) => n.type === type);
      const el = document.querySelector(`[data-node-id="${node.id}"]`);
      return el ? [...el.querySelectorAll("img")].map((i) => [i.naturalWidth, i.naturalHeight, (i.src.split("?")[1] || "")]) : null;
    }, type);
    return out;
  }


  async function blueprintJob(job) {
    const api = JSON.parse(fs.readFileSync(job.api, "utf8"));
    const data = await page.evaluate(async ({ api, job }) => {
      await window.app.loadApiJson(api, "blueprint");
      const graph = window.app.graph;
      const inner = graph._nodes.filter((n) => !job.keep.includes(n.type));
      const { node, subgraph } = graph.convertToSubgraph(new Set(inner));
      subgraph.name = job.name;
      subgraph.description = job.description;
      node.title = job.name;
      for (const inner of subgraph.nodes) {
        if (job.models?.[inner.type]) inner.properties.models = job.models[inner.type];
      }
      node.properties.proxyWidgets = job.promote.map(([type, widget, label]) => {
        const n = subgraph.nodes.find((x) => x.type === type);
        // a label on the inner input names the widget on the blueprint's node (two loaders both say model_name)
        if (label) n.inputs.find((i) => i.name === widget).label = label;
        return [String(n.id), widget];
      });
      const { nodes, subgraphs } = window.app.canvas._serializeItems([node]);
      // the node library files it under "Subgraph Blueprints/<category>"
      subgraphs[0].category = job.category;
      return { revision: 0, last_node_id: node.id, last_link_id: 0, nodes, links: [], version: 0.4,
               definitions: { subgraphs }, extra: { BlueprintDescription: job.description } };
    }, { api, job });
    fs.writeFileSync(job.out, JSON.stringify(data, null, 2) + "\n");
    return { mode: "blueprint", out: job.out, inner: data.definitions.subgraphs[0].nodes.map((n) => n.type),
             inputs: data.nodes[0].inputs.map((i) => i.name), outputs: data.nodes[0].outputs.map((o) => o.name) };
  }


  async function runBlueprintJob(job) {
    const built = await page.evaluate(async ({ job, pack }) => {
      const api = window.app.api, LG = window.LiteGraph;
      const list = await (await api.fetchApi("/global_subgraphs")).json();
      const found = Object.entries(list).find(([, e]) => e.name === job.name && e.info?.node_pack === `custom_nodes.${pack}`);
      if (!found) return { listed: Object.values(list).map((e) => `${e.info?.node_pack}:${e.name}`) };
      const entry = await (await api.fetchApi(`/global_subgraphs/${found[0]}`)).json();
      const bp = JSON.parse(entry.data);
      // the test's own widget values (its model files) go into the inner nodes' saved values, where the
      // blueprint's promoted widgets take theirs from when it is added
      for (const inner of bp.definitions.subgraphs[0].nodes) {
        const names = (inner.inputs || []).filter((i) => i.widget).map((i) => i.name);
        for (const [w, v] of Object.entries((job.widgets || {})[inner.type] || {})) {
          const at = names.indexOf(w);
          if (at >= 0 && inner.widgets_values) inner.widgets_values[at] = v;
        }
      }
      const canvas = window.app.canvas, graph = window.app.graph;
      graph.clear();
      const added = canvas._deserializeItems({ nodes: bp.nodes, subgraphs: bp.definitions?.subgraphs }, { position: [500, 200] });
      const node = added.nodes.values().next().value;
      let y = 100;
      node.inputs.forEach((input, slot) => {
        if (input.type !== "IMAGE") return;
        const load = LG.createNode("LoadImage");
        graph.add(load);
        load.pos = [50, y]; y += 350;
        load.widgets.find((w) => w.name === "image").value = job.inputs[input.name];
        load.connect(0, node, slot);
      });
      node.outputs.forEach((output, slot) => {
        const view = LG.createNode(output.type === "MASK" ? "MaskPreview" : "PreviewImage");
        graph.add(view);
        view.pos = [900, 100 + slot * 300];
        node.connect(slot, view, 0);
      });
      return { title: node.title, inputs: node.inputs.filter((i) => !i.widget).map((i) => i.name),
               outputs: node.outputs.map((o) => o.name),
               promoted: (node.widgets || []).map((w) => w.name), labels: (node.widgets || []).map((w) => w.label ?? w.name),
               inner: node.subgraph.nodes.map((n) => n.type) };
    }, { job, pack: job.pack || "ComfyUI-PDFNet" });
    const out = { mode: "run_blueprint", name: job.name, ...built };
    if (!built.title) return out;
    out.run = await queueAndWait();
    out.shown = await page.evaluate(() => window.app.graph._nodes
      .filter((n) => n.type === "PreviewImage" || n.type === "MaskPreview")
      .map((n) => ({ type: n.type, images: (window.app.nodeOutputs?.[String(n.id)]?.images || []).length })));
    await fitView();
    if (job.png) await page.screenshot({ path: job.png });
    out.png = job.png;
    return out;
  }

  async function pickerJob(job) {
    await loadUi(job.ui, job.widgets);
    await page.waitForTimeout(500);
    await centreOn("PDFNetComposite");
    await page.waitForTimeout(800);
    await hideNotices();
    const out = { mode: "picker", ui: job.ui, vue: await page.evaluate(() => !!window.LiteGraph?.vueNodesMode) };
    out.box = await shootBox(await nodeBox("PDFNetComposite"), job.png);
    out.png = job.png;
    out.click = await pickerClick();
    return out;
  }

  // Click "pick colour…" as a user does, on whichever renderer draws it; report the <input type=color> it opened.
  async function pickerClick() {
    const opened = () => page.evaluate(() => [...document.querySelectorAll("input[type=color]")].filter((i) => i.style.left === "-100px").length);
    const before = await opened();
    const target = await page.evaluate(() => {
      const node = window.app.graph._nodes.find((n) => n.type === "PDFNetComposite");
      if (!node) return null;
      const el = document.querySelector(`[data-node-id="${node.id}"]`);
      if (el) {
        const b = [...el.querySelectorAll("button")].find((x) => /pick colou?r/i.test(x.textContent || ""));
        if (!b) return { vue: true, found: false };
        b.scrollIntoView();
        const r = b.getBoundingClientRect();
        return { vue: true, found: true, x: r.left + r.width / 2, y: r.top + r.height / 2 };
      }
      const c = window.app.canvas, rect = c.canvas.getBoundingClientRect(), s = c.ds.scale;
      const w = node.pdfnetColorPicker?.button;
      if (!w) return { vue: false, found: false };
      return { vue: false, found: true, x: rect.left + (node.pos[0] + node.size[0] / 2 + c.ds.offset[0]) * s,
               y: rect.top + (node.pos[1] + w.y + (w.computedHeight || 20) / 2 + c.ds.offset[1]) * s };
    });
    if (!target?.found) return { ...target, opened: 0 };
    await page.mouse.click(target.x, target.y);
    await page.waitForTimeout(500);
    return { ...target, opened: (await opened()) - before };
  }

  async function templatesJob(job) {
    await page.evaluate(() => window.app.extensionManager.command.execute("Comfy.BrowseTemplates"));
    await page.waitForTimeout(2500);
    const label = job.pack || "ComfyUI-PDFNet";
    const nav = page.getByText(label, { exact: true }).first();
    const out = { mode: "templates", category: (await nav.count()) > 0 };
    if (out.category) { await nav.click(); await page.waitForTimeout(2500); }
    // the cards' pictures as drawn (the frontend fetches a thumbnail and shows it as a blob: URL,
    // its alt is the template's name; a card without a picture shows a placeholder, no <img>)
    out.cards = await page.evaluate(() => [...document.querySelectorAll("img")]
      .map((i) => ({ alt: i.alt, w: i.naturalWidth, h: i.naturalHeight, src: (i.currentSrc || i.src || "").slice(0, 120) })));
    if (job.png) await page.screenshot({ path: job.png });
    out.png = job.png;
    return out;
  }

  async function localeJob(job) {
    // nodes added fresh, as from the node library: their titles and socket labels come from the locale
    const out = await page.evaluate((types) => {
      const graph = window.app.graph;
      graph.clear();
      const nodes = types.map((t, i) => { const n = window.LiteGraph.createNode(t); graph.add(n); n.pos = [100 + 420 * (i % 3), 100 + 300 * Math.floor(i / 3)]; return n; });
      return {
        locale: window.app.extensionManager?.setting?.get?.("Comfy.Locale") ?? null,
        titles: Object.fromEntries(nodes.map((n) => [n.type, n.title])),
        inputs: Object.fromEntries(nodes.map((n) => [n.type, (n.inputs || []).map((i) => i.localized_name || i.label || i.name)])),
      };
    }, job.types);
    await fitView();
    if (job.png) await page.screenshot({ path: job.png });
    return { mode: "locale", png: job.png, ...out };
  }
  for (const job of spec.jobs) {
    for (const [k, v] of Object.entries(job.settings || {})) await postSetting(k, v);
    await openPage();
    if (job.mode === "export") {
      const api = JSON.parse(fs.readFileSync(job.api, "utf8"));
      await page.evaluate(async ({ api, name }) => {
        await window.app.loadApiJson(api, name);
        // A shared workflow should give the same picture on every run: seeds stay fixed.
        for (const node of window.app.graph._nodes) {
          const w = node.widgets?.find((x) => x.name === "control_after_generate");
          if (w) w.value = "fixed";
        }
      }, { api, name: path.basename(job.api) });
      // Let LoadImage previews load (they make their nodes taller) before the layout is computed.
      await page.waitForTimeout(1500);
      const ui = await page.evaluate(() => {
        // loadApiJson stacks the nodes; the frontend's own layout makes the saved file readable.
        window.app.graph.arrange(60);
        return window.app.graph.serialize();
      });
      if (job.models) ui.models = job.models;
      fs.writeFileSync(job.ui_out, JSON.stringify(ui, null, 2) + "\n");
      await fitView();
      if (job.png) await page.screenshot({ path: job.png });
      results.push({ mode: "export", api: job.api, ui: job.ui_out, png: job.png, nodes: ui.nodes.length });
      continue;
    }
    if (job.mode === "run_blueprint") { results.push(await runBlueprintJob(job)); continue; }
    if (job.mode === "blueprint") { results.push(await blueprintJob(job)); continue; }
    if (job.mode === "picker") { results.push(await pickerJob(job)); continue; }
    if (job.mode === "slider") { results.push(await sliderJob(job)); continue; }
    if (job.mode === "templates") { results.push(await templatesJob(job)); continue; }
    if (job.mode === "locale") { results.push(await localeJob(job)); continue; }
    const ui = JSON.parse(fs.readFileSync(job.ui, "utf8"));
    const info = await page.evaluate(async ({ ui, name, widgets }) => {
      const known = await (await fetch(window.app.api.apiURL("/object_info"))).json();
      await window.app.loadGraphData(ui, true, true, name);
      const nodes = window.app.graph._nodes;
      for (const node of nodes) {
        for (const [wname, value] of Object.entries((widgets || {})[node.type] || {})) {
          const w = node.widgets?.find((x) => x.name === wname);
          if (w) w.value = value;
        }
      }
      const compare = nodes.filter((n) => n.type === "PDFNetCompare");
      const composite = nodes.filter((n) => n.type === "PDFNetComposite");
      return {
        // a type the server does not list, or a node the frontend could not build from a definition
        missing: [...new Set(ui.nodes.map((n) => n.type).filter((t) => !(t in known)))],
        unbuilt: nodes.filter((n) => !n.constructor?.nodeData).map((n) => n.type),
        loaded: nodes.length,
        in_file: ui.nodes.length,
        models: ui.models || [],
        extensions: window.app.extensions.map((e) => e.name),
        // the slider: core's IMAGECOMPARE widget where the server has it, else the pack's own
        compare_widgets: compare.map((n) => n.pdfnetCompare?.type || null),
        color_pickers: composite.map((n) => !!n.pdfnetColorPicker),
        color_widget_types: composite.map((n) => n.widgets?.find((w) => w.name === "color")?.type),
        // The picker's round trip without the native dialog (headless has none): what a user's choice
        // in <input type=color> fires, then the widget's value; the original value is put back.
        color_roundtrip: composite.map((n) => {
          const picker = n.pdfnetColorPicker;
          if (!picker) return null;
          const old = picker.target.value;
          const input = picker.open();
          input.value = "#12ab9f";
          input.dispatchEvent(new Event("change"));
          const got = picker.target.value;
          picker.target.value = old;
          return got;
        }),
      };
    }, { ui, name: path.basename(job.ui), widgets: job.widgets });
    const result = { mode: "check", ui: job.ui, ...info };
    if (job.queue) {
      result.run = await queueAndWait();
      result.compare = await page.evaluate(async () => {
        const out = [];
        for (const node of window.app.graph._nodes.filter((n) => n.type === "PDFNetCompare")) {
          const w = node.pdfnetCompare;
          const count = await (w.loading || Promise.resolve(0));
          out.push({
            id: node.id, pairs: count,
            before: w.pairs.map((p) => [p.before.naturalWidth, p.before.naturalHeight, p.before.src.split("?")[1]]),
            after: w.pairs.map((p) => [p.after.naturalWidth, p.after.naturalHeight, p.after.src.split("?")[1]]),
            widget: w.type, value: w.type === "imagecompare" ? w.value : null,
          });
        }
        return out;
      });
      // Centre on the comparer so the screenshot shows the slider with both pictures.
      await page.evaluate(() => {
        const node = window.app.graph._nodes.find((n) => n.type === "PDFNetCompare");
        if (!node) return;
        node.setSize([520, 460]);
        node.pdfnetCompare.split = 0.5;
        const c = window.app.canvas;
        c.ds.scale = 1.2;
        c.ds.offset[0] = -node.pos[0] + 110;
        c.ds.offset[1] = -node.pos[1] + 90;
        c.setDirty(true, true);
      });
      await page.waitForTimeout(800);
      await hideNotices();
    } else {
      await fitView();
    }
    if (job.png) await page.screenshot({ path: job.png });
    result.png = job.png;
    results.push(result);
  }
  console.log(JSON.stringify({ ok: true, results, errors: logs.filter((l) => /error|\[http/i.test(l)).slice(0, 30) }, null, 2));
} catch (e) {
  console.log(JSON.stringify({ ok: false, error: String(e && e.stack || e), results, logs: logs.slice(-40) }, null, 2));
  process.exitCode = 1;
} finally {
  await browser.close();
}
