"""What `--method auto` prints and draws: one row per Conv (its candidates, the choice and
why), the budget against what the written model achieved, the speedups and the work."""

from __future__ import annotations

from dataclasses import dataclass

from ..table import format_table


def _candidates_cell(row: dict) -> str:
    parts = []
    for c in row.get("candidates", []):
        if c.get("saved_ms") is None:
            continue
        err = f"/{c['error']:.1e}" if c.get("error") is not None else ""
        parts.append(f"{c['label']} {c['saved_ms']:+.3f}{err}")
    return "; ".join(parts)


def print_plan(report, echo) -> None:
    plan = report.plan
    rows = []
    for r in report.layers:
        rows.append([r["name"], r.get("macs"), r.get("choice"), r.get("saved_ms"),
                     None if r.get("error_alone") is None else f"{r['error_alone']:.2e}", r.get("why", "")])
    echo(format_table(["layer", "MACs", "choice", "saved ms", "error alone", "why"], rows))
    echo("candidates per layer (saved ms in the model / relative output error alone on the validation inputs):")
    for r in report.layers:
        if r.get("candidates"):
            echo(f"  {r['name']}: {_candidates_cell(r) or 'none measured'}")
    a = plan["achieved"]
    conf = plan.get("confidence") or 0
    pct = f"{100 * conf:g}%"

    def bounded(name, value, lower):
        return f"{name} {value}" + (f" (>= {lower} on unseen inputs at {pct})" if conf and lower is not None else "")

    achieved = [bounded("agreement", a["agreement"], a.get("agreement_lower")) if a.get("agreement") is not None
                else "", bounded("cosine", a["cosine"], a.get("cosine_lower")), f"relative error {a['rel_error']}"]
    echo(f"budget: {plan['budget']['text']}; achieved on {plan['validation_inputs']} validation inputs: "
         + ", ".join(x for x in achieved if x) + (" (meets it)" if plan["meets_budget"] else " (MISSES IT)"))
    if plan.get("original_eval_top1") is not None:
        on_eval = [bounded("agreement", a["eval_agreement"], a.get("eval_agreement_lower"))
                   if a.get("eval_agreement") is not None else "",
                   bounded("cosine", a["eval_cosine"], a.get("eval_cosine_lower"))
                   if a.get("eval_cosine") is not None else ""]
        held = plan.get("confirmed")
        echo(f"evaluation data ({a.get('eval_samples')} --eval inputs{', planned on' if held else ''}): "
             f"top-1 {plan['original_eval_top1']:.4f} -> "
             f"{a.get('eval_top1'):.4f} ({a.get('eval_drop'):+.2f} points lost"
             + (f"; <= {a['eval_drop_upper']:.2f} on unseen inputs at {pct}" if a.get("eval_drop_upper") is not None
                and conf and not held else "") + ")" + "".join(f", {x}" for x in on_eval if x))
        if held:
            echo(f"held out of planning ({held['samples']} --eval inputs, {held['looks']} look"
                 f"{'s' if held['looks'] != 1 else ''}): top-1 {held['original_top1']:.4f} -> {held['top1']:.4f} "
                 f"({held['drop']:+.2f} points lost"
                 + (f"; <= {held['drop_upper']:.2f} on unseen inputs at {pct}" if conf else "") + ")"
                 + (" (meets the budget)" if held["meets"] else " (MISSES IT)"))
    sp = ", ".join(f"{v:.3f}x at {t} thread{'s' if t != '1' else ''}" for t, v in plan["speedup"].items())
    echo(f"{plan['layers_replaced']} of {plan['conv_layers']} Conv replaced ({plan['plan']} fit); measured "
         f"speedup against the canonicalised original: {sp}; Conv MACs at batch 1 {plan['macs_before']:,} -> "
         f"{plan['macs_after']:,} (additions and lookups in the JSON report)")
    for st in plan.get("stages", []):
        m = st.get("measurement") or {}
        echo(f"stage {st['stage']} on the {st['base']}: " + (
            f"{st['layers']} Conv, {st['speedup']:.3f}x, agreement {m.get('agreement')}, cosine {m.get('cosine')}"
            + (f", top-1 drop {m['eval_drop']:+.2f}" if m.get("eval_drop") is not None else "")
            + (f", {len(st['given_back'])} given back for the budget" if st.get("given_back") else "")
            + (f", other ops quantized too ({st['widen_gain']:.3f}x)" if st.get("widened") else "")
            if st.get("speedup") is not None else st.get("note", "")) + f" ({st['seconds']} s)")
    if plan.get("int8_macs"):
        echo(f"of the Conv MACs after, {plan['int8_macs']:,} run in INT8 (u8 x s8)")
    tc = plan["timing_cache"]
    echo(f"planned in {plan['planning_seconds']} s ({plan['measurements']} validation measurements; timing cache "
         f"{tc['hits']} hits, {tc['misses']} new timings{', ' + tc['path'] if tc['path'] else ''})")
    if plan.get("settings"):
        echo(format_table(["single setting on every layer (independent fits)", "layers", "speedup", "agreement",
                           "cosine", "meets budget"],
                          [[s["label"], s["layers"], s["speedup"], s["measurement"].get("agreement"),
                            s["measurement"]["cosine"], "yes" if s["meets_budget"] else "no"]
                           for s in plan["settings"]]))
    for note in report.notes:
        echo(f"note: {note}")


@dataclass
class Written:
    ok: bool
    reason: str = ""

    def __bool__(self) -> bool:
        return self.ok


def _metric(m: dict, plan: dict) -> tuple[float | None, str]:
    b = plan["budget"]
    if b.get("max_drop") is not None and m.get("eval_drop") is not None:
        return m["eval_drop"], "top-1 points lost (evaluation data)"
    if m.get("agreement") is not None and b.get("min_cosine") is None:
        return m["agreement"], "top-1 agreement (validation inputs)"
    return m["cosine"], "output cosine (validation inputs)"


def plot_plan(plan: dict, path: str) -> Written:
    """Validation metric against the speedup at the planning thread count: every single-method
    setting applied to every layer, and the plan. Needs matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return Written(False, "matplotlib is not installed")
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    label = None
    for s in plan.get("settings", []):
        y, label = _metric(s["measurement"], plan)
        ax.scatter(s["speedup"], y, marker="o", color="tab:blue")
        ax.annotate(s["label"], (s["speedup"], y), fontsize=7, xytext=(3, 3), textcoords="offset points")
    for st in plan.get("stages", []):
        if st.get("base") == "original" and st.get("speedup") is not None:
            y, label = _metric(st["measurement"], plan)
            ax.scatter(st["speedup"], y, marker="s", color="tab:green")
            ax.annotate(f"{st['stage']} alone", (st["speedup"], y), fontsize=7, xytext=(3, 3),
                        textcoords="offset points")
    y, label = _metric(plan["achieved"], plan)
    t = str(plan["planning_threads"])
    ax.scatter(plan["speedup"].get(t, 1.0), y, marker="*", s=160, color="tab:red", label="auto plan")
    ax.axvline(1.0, color="gray", lw=0.8, ls=":")
    ax.set_xlabel(f"speedup against the original, {t} thread(s), in the model")
    ax.set_ylabel(label)
    ax.set_title(f"budget: {plan['budget']['text']}", fontsize=8)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Written(True)
