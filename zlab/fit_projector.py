"""``python -m zlab fit-projector``: fit a projector from another Qwen3's hidden states to Qwen3-4B's layer -2.

Runs locally with transformers (no ComfyUI server): each prompt is wrapped in Z-Image's chat template,
encoded by the source Qwen3 (a Hugging Face folder) and the target (a Hugging Face folder, or
ComfyUI's single-file qwen_3_4b.safetensors with --tokenizer), and the token embeddings are paired
one to one (Qwen3 models share one tokenizer; prompts that tokenize differently are skipped).
Then a linear map is solved by least squares or a small MLP trained on the MSE, and written as
safetensors for the Load Qwen3 Projector node (ComfyUI's models/projectors).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def add_parser(sub) -> None:
    p = sub.add_parser("fit-projector", help="fit a projector from another Qwen3 to Qwen3-4B's layer -2 embeddings",
                       description=__doc__.split("\n\n")[0])
    p.add_argument("--source", required=True, help="Hugging Face Qwen3 folder whose embeddings are projected")
    p.add_argument("--target", required=True,
                   help="Hugging Face Qwen3 folder, or a single-file Qwen3 such as ComfyUI's qwen_3_4b.safetensors")
    p.add_argument("--tokenizer", help="tokenizer folder for a single-file --target (default: the source's)")
    p.add_argument("--prompts", required=True, help="text file, one prompt per line (blank lines and #comments skipped)")
    p.add_argument("--out", required=True, help="projector .safetensors to write")
    p.add_argument("--source-layer", type=int, default=-2, help="source hidden layer (default -2)")
    p.add_argument("--target-layer", type=int, default=-2, help="target hidden layer (default -2, what Z-Image reads)")
    p.add_argument("--kind", choices=("linear", "mlp"), default="linear",
                   help="linear: least squares (default); mlp: Linear-GELU-Linear trained on the MSE")
    p.add_argument("--ridge", type=float, default=0.0, help="ridge penalty for the linear fit (default 0)")
    p.add_argument("--hidden", type=int, default=1024, help="MLP hidden width (default 1024)")
    p.add_argument("--epochs", type=int, default=20, help="MLP epochs (default 20)")
    p.add_argument("--lr", type=float, default=1e-3, help="MLP learning rate (default 1e-3)")
    p.add_argument("--holdout", type=float, default=0.1,
                   help="fraction of prompts kept out of the fit to report a held-out MSE (default 0.1; 0 = none)")
    p.add_argument("--dtype", choices=("float32", "bfloat16", "float16"), default="float32", help="model dtype")
    p.add_argument("--device", default="cpu", help="torch device for the two models (default cpu)")
    p.set_defaults(func=main)


def read_prompts(path) -> list[str]:
    lines = Path(path).read_text(encoding="utf-8").splitlines()
    prompts = [l.strip() for l in lines if l.strip() and not l.lstrip().startswith("#")]
    if not prompts:
        raise ValueError(f"{path} holds no prompts: write one prompt per line")
    return prompts


def _core():
    """The pack's core package (this command runs from the pack folder, beside core/)."""
    root = str(Path(__file__).resolve().parent.parent)
    if root not in sys.path:
        sys.path.insert(0, root)
    from core import encoder, formatter, hf_qwen3, projector

    return encoder, formatter, hf_qwen3, projector


def _load(path, tokenizer, dtype, device, hf_qwen3):
    path = Path(path)
    if path.is_dir():
        return hf_qwen3.load_folder(path, dtype).to(device), hf_qwen3.load_tokenizer(path)
    if not path.is_file():
        raise ValueError(f"{path} is neither a Hugging Face folder nor a safetensors file")
    if tokenizer is None:
        raise ValueError(f"{path.name} is a single file: pass --tokenizer with a Qwen tokenizer folder")
    return hf_qwen3.load_single_file(path, dtype).to(device), hf_qwen3.load_tokenizer(tokenizer)


def embed_pairs(prompts, source, target, source_layer, target_layer, device, log=print):
    """Token-paired [N, W_source] and [N, W_target] embeddings of the prompts in Z-Image's template."""
    import torch

    encoder, formatter, hf_qwen3, _ = _core()
    (src_model, src_tok), (tgt_model, tgt_tok) = source, target
    xs, ys, used = [], [], []
    for prompt in prompts:
        text = formatter.format_prompt(prompt)
        src_ids, tgt_ids = src_tok(text)["input_ids"], tgt_tok(text)["input_ids"]
        if src_ids != tgt_ids:
            log(f"skipped (tokenizers differ): {prompt[:60]!r}")
            continue
        ids = torch.tensor([src_ids], device=device)
        x = hf_qwen3.hidden_states(src_model, input_ids=ids)[:, encoder.hidden_index(source_layer, hf_qwen3.num_layers(src_model))]
        y = hf_qwen3.hidden_states(tgt_model, input_ids=ids)[:, encoder.hidden_index(target_layer, hf_qwen3.num_layers(tgt_model))]
        xs.append(x[0].cpu())
        ys.append(y[0].cpu())
        used.append(prompt)
    if not used:
        raise ValueError("no prompt tokenizes the same for source and target: are both Qwen3 models?")
    return xs, ys, used


def main(args) -> int:
    import torch

    encoder, _, hf_qwen3, projector = _core()
    try:
        prompts = read_prompts(args.prompts)
        dtype = hf_qwen3.DTYPES[args.dtype]
        source = _load(args.source, None, dtype, args.device, hf_qwen3)
        target = _load(args.target, args.tokenizer or args.source, dtype, args.device, hf_qwen3)
        for layer, model, name in ((args.source_layer, source[0], "--source-layer"), (args.target_layer, target[0], "--target-layer")):
            encoder.check_layer(layer, hf_qwen3.num_layers(model), name)
        xs, ys, used = embed_pairs(prompts, source, target, args.source_layer, args.target_layer, args.device)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    held = int(len(used) * args.holdout) if len(used) > 1 else 0
    fit_x, fit_y = torch.cat(xs[held:]), torch.cat(ys[held:])
    print(f"{len(used)} prompts, {fit_x.shape[0]} tokens: source width {fit_x.shape[1]} -> target width {fit_y.shape[1]}"
          f"{f', {held} prompts held out' if held else ''}")
    if args.kind == "linear":
        proj = projector.fit_linear(fit_x, fit_y, ridge=args.ridge)
    else:
        proj = projector.fit_mlp(fit_x, fit_y, hidden_features=args.hidden, epochs=args.epochs, lr=args.lr,
                                 progress=lambda e, n, loss: print(f"epoch {e}/{n}: batch mse {loss:.6g}"))
    report = {"source": Path(args.source).name, "target": Path(args.target).name, "source_layer": args.source_layer,
              "target_layer": args.target_layer, "prompts": len(used) - held,
              "train_mse": projector.mse(proj, fit_x, fit_y),
              "target_variance": float(((fit_y - fit_y.mean(0)) ** 2).mean())}
    if held:
        report["heldout_mse"] = projector.mse(proj, torch.cat(xs[:held]), torch.cat(ys[:held]))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    projector.save(args.out, proj, report)
    print(json.dumps(report, indent=1))
    print(f"wrote {proj.describe()} to {args.out}")
    return 0
