// Z-Image Lab frontend: shows what a node reports (its "text" UI output, e.g. the sampler's
// sigma schedule) in a read-only box on the node after it runs. Not saved with the workflow.
import { app } from "../../scripts/app.js";

const REPORT = "zimage_lab_report";

function reportWidget(node) {
  let widget = node.widgets?.find((w) => w.name === REPORT);
  if (widget) return widget;
  const box = document.createElement("textarea");
  box.readOnly = true;
  box.className = "zimage-lab-report comfy-multiline-input";
  box.style.opacity = 0.75;
  box.style.fontFamily = "monospace";
  box.style.fontSize = "11px";
  widget = node.addDOMWidget(REPORT, "zimage_lab_report", box, {
    serialize: false,
    getValue: () => box.value,
    setValue: (v) => { box.value = v ?? ""; },
    getMinHeight: () => 48,
  });
  widget.serialize = false;
  return widget;
}

app.registerExtension({
  name: "ZImageLab.NodeReport",
  async beforeRegisterNodeDef(nodeType, nodeData) {
    if (!nodeData?.name?.startsWith("ZImageLab")) return;
    const onExecuted = nodeType.prototype.onExecuted;
    nodeType.prototype.onExecuted = function (message) {
      onExecuted?.apply(this, arguments);
      const text = message?.text;
      if (!text || !text.length) return;
      reportWidget(this).value = text.join("\n");
      const [w, h] = this.computeSize();
      this.setSize([Math.max(this.size[0], w), Math.max(this.size[1], h)]);
      this.setDirtyCanvas?.(true, true);
    };
  },
});
