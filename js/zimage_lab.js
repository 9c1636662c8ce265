// Z-Image Lab frontend: shows what a node reports (its "text" UI output, e.g. the sampler's
// sigma schedule) in a read-only box on the node after it runs.
import { app } from "../../scripts/app.js";
import { ComfyWidgets } from "../../scripts/widgets.js";

const REPORT = "zimage_lab_report";

app.registerExtension({
  name: "ZImageLab.NodeReport",
  async beforeRegisterNodeDef(nodeType, nodeData) {
    if (!nodeData?.name?.startsWith("ZImageLab")) return;
    const onExecuted = nodeType.prototype.onExecuted;
    nodeType.prototype.onExecuted = function (message) {
      onExecuted?.apply(this, arguments);
      const text = message?.text;
      if (!text || !text.length) return;
      let widget = this.widgets?.find((w) => w.name === REPORT);
      if (!widget) {
        widget = ComfyWidgets["STRING"](this, REPORT, ["STRING", { multiline: true }], app).widget;
        widget.inputEl.readOnly = true;
        widget.inputEl.style.opacity = 0.75;
        widget.serialize = false;
      }
      widget.value = text.join("\n");
      this.setDirtySize?.();
    };
  },
});
