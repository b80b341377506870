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
    await page.addStyleTag({ content: ".p-toast, [role=alert], [data-pc-name=toast] { display: none !important; }" });
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

  for (const job of spec.jobs) {
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
        compare_widgets: compare.map((n) => !!n.widgets?.find((w) => w.name === "pdfnet_compare")),
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
      result.run = await page.evaluate(() => new Promise((resolve) => {
        const api = window.app.api;
        const done = (ev, ok) => resolve({ ok, type: ev.type, detail: ev.detail?.exception_message || null });
        api.addEventListener("execution_success", (e) => done(e, true), { once: true });
        api.addEventListener("execution_error", (e) => done(e, false), { once: true });
        window.app.queuePrompt(0, 1).then((r) => { if (r === false) resolve({ ok: false, type: "not queued" }); });
        setTimeout(() => resolve({ ok: false, type: "timeout" }), 240000);
      }));
      result.compare = await page.evaluate(async () => {
        const out = [];
        for (const node of window.app.graph._nodes.filter((n) => n.type === "PDFNetCompare")) {
          const w = node.widgets.find((x) => x.name === "pdfnet_compare");
          const count = await (w.loading || Promise.resolve(0));
          out.push({
            id: node.id, pairs: count,
            before: w.pairs.map((p) => [p.before.naturalWidth, p.before.naturalHeight, p.before.src.split("?")[1]]),
            after: w.pairs.map((p) => [p.after.naturalWidth, p.after.naturalHeight, p.after.src.split("?")[1]]),
          });
        }
        return out;
      });
      // Centre on the comparer so the screenshot shows the slider with both pictures.
      await page.evaluate(() => {
        const node = window.app.graph._nodes.find((n) => n.type === "PDFNetCompare");
        if (!node) return;
        node.setSize([520, 460]);
        const w = node.widgets.find((x) => x.name === "pdfnet_compare");
        w.split = 0.5;
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
